"""Dataset discovery, validation, decoded-array cache and on-device augmentation."""
