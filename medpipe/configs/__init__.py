"""Packaged configuration files (default.yaml: the original classifier's settings; sample.yaml: quick CPU run)."""
