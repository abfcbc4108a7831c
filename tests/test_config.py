from pathlib import Path

import pytest
import yaml

from medpipe.config import ConfigError, load_config, save_config, config_from_dict, config_to_dict


def test_default_config_reproduces_original_settings():
    cfg = load_config()
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs) == (224, 32, 50)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.patience) == (1e-3, 2e-4, 10)
    assert cfg.train.class_weights == [0.1, 3.0, 4.0] and cfg.train.label_smoothing == 0.1
    assert cfg.augment.crop_scale == (0.7, 1.0) and cfg.augment.mixup_alpha == 0.3
    assert (cfg.models.resnet18.head_lr, cfg.models.resnet18.backbone_lr, cfg.models.resnet18.unfreeze_every) == (
        1e-3, 1e-4, 5)
    assert cfg.train.monitor == "macro_auc"


def test_file_and_overrides_merge(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodels:\n  resnet18:\n    weights: none\n")
    cfg = load_config(path, ["train.lr=0.01", "train.class_weights=auto", "augment.crop_scale=[0.5, 1.0]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01 and cfg.train.class_weights == "auto"
    assert cfg.models.resnet18.weights == "none" and cfg.augment.crop_scale == (0.5, 1.0)
    assert cfg.train.batch_size == 32  # untouched defaults stay


@pytest.mark.parametrize("override, expected", [
    ("train.lrr=1", "train.lrr: unknown key"),
    ("train.lr=fast", "train.lr='fast'"),
    ("train.monitor=speed", "'macro_auc'"),
    ("train.class_weights=[1, 2]", "one weight per class"),
    ("nosuch.key=1", "unknown section(s) ['nosuch']"),
    ("validate.severity.bogus=error", "unknown checks ['bogus']"),
    ("data.image_size=4", "data.image_size must be in 16..1024"),
    ("train.epochs", "must look like section.key=value"),
    ("evaluate.explain_per_class=20", "evaluate.explain_per_class must be in 0..8 (0 = no Grad-CAM plot), got 20"),
    ("data.patient_id_source=header", "data.patient_id_source='header': Input should be 'auto' or 'file_name'"),
    ("data.largest_region_only=maybe", "data.largest_region_only='maybe'"),
])
def test_bad_values_name_key_value_and_allowed(override: str, expected: str):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)


def test_bad_file_is_named(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path: Path):
    cfg = load_config(None, ["train.epochs=7"])
    path = save_config(cfg, tmp_path / "config.yaml")
    tree = yaml.safe_load(path.read_text())
    assert tree["train"]["epochs"] == 7
    assert config_to_dict(config_from_dict(tree)) == config_to_dict(cfg)


def test_sample_config_is_valid():
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "sample.yaml")
    assert cfg.models.resnet18.weights == "none" and cfg.data.image_size == 64


def test_scratch_config_is_valid_and_only_lightens_augmentation():
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "scratch.yaml")
    default = load_config(None)
    assert cfg.models.resnet18.weights == "none" and cfg.train.class_weights == "none"
    assert cfg.augment.enabled and cfg.augment.mixup_alpha == 0 and cfg.augment.erasing_p == 0
    assert cfg.augment.rotation_degrees < default.augment.rotation_degrees
    # Everything the study did not change stays at the original settings.
    assert (cfg.train.lr, cfg.train.label_smoothing, cfg.train.weighted_sampling) == \
        (default.train.lr, default.train.label_smoothing, default.train.weighted_sampling)
