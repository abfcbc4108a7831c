from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import annotated_types
import pytest
import yaml

from medpipe.cli import main
from medpipe.config import (Config, ConfigError, build_config, config_from_dict, config_to_dict, load_config,
                            save_config)


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
    # Nonsense that used to load (or to fail only inside torch, or to make scoring drop images).
    ("augment.hflip_p=2", "augment.hflip_p=2: Input should be less than or equal to 1"),
    ("augment.erasing_p=-1", "augment.erasing_p=-1: Input should be greater than or equal to 0"),
    ("augment.crop_scale=[2,1]", "augment.crop_scale.0=2: Input should be less than or equal to 1"),
    ("augment.crop_scale=[0.9, 0.5]", "augment.crop_scale=[0.9, 0.5]: the range must be [low, high] with low <= high"),
    ("augment.crop_ratio=[1.3, 0.7]", "augment.crop_ratio=[1.3, 0.7]: the range must be [low, high] with low <= high"),
    ("augment.mixup_alpha=-1", "augment.mixup_alpha=-1: Input should be greater than or equal to 0"),
    ("augment.rotation_degrees=-5000", "augment.rotation_degrees=-5000: Input should be greater than or equal to 0"),
    ("train.patience=-1", "train.patience=-1: Input should be greater than or equal to 1"),
    ("train.weight_decay=-1", "train.weight_decay=-1: Input should be greater than or equal to 0"),
    ("models.resnet18.head_lr=-1", "models.resnet18.head_lr=-1: Input should be greater than 0"),
    ("data.max_pixels=-1", "data.max_pixels=-1: Input should be greater than or equal to 1"),
    ("train.epochs=true", "train.epochs=True: Input should be a number, not a boolean"),
    ("train.lr=0", "train.lr=0: Input should be greater than 0"),
    ("train.lr=-0.01", "train.lr=-0.01: Input should be greater than 0"),
    ("train.lr=nan", "train.lr='nan': Input should be a finite number"),
    ("models.custom_cnn.dropout=3", "models.custom_cnn.dropout=3: Input should be less than 1"),
    ("score.batch_size=0", "score.batch_size=0: Input should be greater than or equal to 1"),
    ("train.class_weights=[1, -1, 2]", "train.class_weights.1=-1: Input should be greater than or equal to 0"),
    ("train.class_weights=[0, 0, 0]", "at least one weight must be positive"),
    ("gate.min_metrics={macro_auc: 1.01}", "gate.min_metrics.macro_auc=1.01: macro_auc is a rate, its minimum must be "
                                           "in [0, 1]"),
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


def test_numbers_written_as_yaml_strings_still_load():
    # PyYAML (YAML 1.1) reads 1e-3 as the string '1e-3'; it has always meant 0.001.
    cfg = load_config(None, ["train.lr=1e-3", "models.resnet18.backbone_lr=1e-5", "train.epochs=5.0"])
    assert (cfg.train.lr, cfg.models.resnet18.backbone_lr, cfg.train.epochs) == (1e-3, 1e-5, 5)


def test_gate_minimums_of_counts_may_exceed_one():
    cfg = load_config(None, ["gate.min_metrics={macro_auc: 0.8, n: 200, support_cancer: 20}"])
    assert cfg.gate.min_metrics == {"macro_auc": 0.8, "n": 200, "support_cancer": 20}


# Numbers a section checks in its own __post_init__ (the message says what the range means) rather than with a
# pydantic bound: values outside their range, by dotted key.
_OUT_OF_RANGE_BY_HAND = {
    "data.image_size": [15, 1025],
    "validate.near_duplicate_distance": [-1, 65],
    "validate.near_duplicate_confirm_distance": [-1, 257],
    "validate.source_confound_threshold": [0.0, 1.5],
    "evaluate.explain_per_class": [-1, 9],
    "gate.min_metrics": [1.5],  # a rate's minimum; pydantic checks >= 0
    "score.prevalence": [-0.5],
}


def _bounds(metadata: tuple) -> list:
    """The annotated_types bounds (Ge, Gt, Le, Lt) among Annotated metadata, pydantic FieldInfo unpacked."""
    found = []
    for item in metadata:
        for bound in getattr(item, "metadata", [item]):
            if isinstance(bound, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)):
                found.append(bound)
    return found


def _numeric_leaves(tp: Any, path: tuple, metadata: tuple = ()) -> Iterator[tuple[tuple, type, list]]:
    """(path into the config tree, int or float, bounds) for every number `tp` holds; list and mapping entries
    are represented by their first one, union members (class_weights' list) each by their own."""
    if typing.get_origin(tp) is Annotated:
        yield from _numeric_leaves(tp.__origin__, path, metadata + tp.__metadata__)
    elif dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        for f in dataclasses.fields(tp):
            yield from _numeric_leaves(hints[f.name], (*path, f.name))
    elif tp in (int, float):
        yield path, tp, _bounds(metadata)
    elif typing.get_origin(tp) in (typing.Union, types.UnionType):
        for member in typing.get_args(tp):
            yield from _numeric_leaves(member, path)
    elif typing.get_origin(tp) is tuple:
        for index, member in enumerate(typing.get_args(tp)):
            yield from _numeric_leaves(member, (*path, index))
    elif typing.get_origin(tp) is list:
        yield from _numeric_leaves(typing.get_args(tp)[0], (*path, 0))
    elif typing.get_origin(tp) is dict:
        yield from _numeric_leaves(typing.get_args(tp)[1], (*path, "<first key>"))
    else:  # a type this walk does not know could hide numbers from the test below
        assert tp in (str, bool, type(None)) or typing.get_origin(tp) is typing.Literal, f"{path}: {tp}"


def _outside(bound: Any, kind: type) -> float | int:
    """A value just outside one bound: the bound itself when it is exclusive, one step beyond when inclusive."""
    step = 1 if kind is int else 0.5
    if isinstance(bound, annotated_types.Ge):
        return bound.ge - step
    if isinstance(bound, annotated_types.Le):
        return bound.le + step
    return kind(bound.gt if isinstance(bound, annotated_types.Gt) else bound.lt)


def _with_value(tree: dict, path: tuple, value: Any) -> dict:
    """A copy of `tree` with the number at `path` replaced."""
    tree = copy.deepcopy(tree)
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[next(iter(node)) if path[-1] == "<first key>" else path[-1]] = value
    return tree


def _bad_values(key: str, kind: type, bounds: list) -> list:
    """Values just outside each bound (or listed in _OUT_OF_RANGE_BY_HAND), a boolean, and nan and inf (floats)."""
    lower = [b for b in bounds if isinstance(b, (annotated_types.Ge, annotated_types.Gt))]
    assert lower or key in _OUT_OF_RANGE_BY_HAND, \
        f"{key} is a number without a lower bound: bound it (medpipe.config_types, Field(ge=...))"
    values = [_outside(b, kind) for b in bounds] + _OUT_OF_RANGE_BY_HAND.get(key, [])
    return values + [True] + ([math.nan, math.inf] if kind is float else [])


def test_every_number_is_checked_when_the_config_loads():
    """Every numeric setting, found by walking the Config dataclasses, is refused outside its range, as a boolean
    and (floats) as nan or inf, by a ConfigError whose line names the key and the value."""
    tree = config_to_dict(load_config())
    tree["score"]["prevalence"] = [1.0, 1.0, 1.0]  # None by default: give the list entries to drive
    leaves = list(_numeric_leaves(Config, ()))
    assert len(leaves) > 40  # the walk found the sections' numbers
    failures = []
    for path, kind, bounds in leaves:
        key = ".".join(str(p) for p in path if isinstance(p, str) and p != "<first key>")
        for value in _bad_values(key, kind, bounds):
            try:
                build_config(_with_value(tree, path, value), "test")
            except ConfigError as exc:
                lines = [line for line in str(exc).splitlines()[1:] if key in line]
                if not any(repr(value) in line for line in lines):
                    failures.append(f"{key}={value!r}: message does not name key and value: {exc}")
            else:
                failures.append(f"{key}={value!r} was accepted")
    assert not failures, "\n".join(failures)


def test_bad_setting_fails_before_any_data_is_read(tmp_path: Path, capsys: pytest.CaptureFixture):
    """The config is checked first: the missing data folder is never looked at, nothing is written."""
    code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "out"),
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.lr=nan"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.lr='nan': Input should be a finite number" in err and "no-data" not in err
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, line", [
    ("augment.hflip_p=2", "augment.hflip_p=2: Input should be less than or equal to 1 (allowed: 0 <= value <= 1)"),
    ("models.custom_cnn.dropout=3", "models.custom_cnn.dropout=3: Input should be less than 1 "
                                    "(allowed: 0 <= value < 1)"),
    ("train.class_weights=[1, -1, 2]", "train.class_weights.1=-1: Input should be greater than or equal to 0 "
                                       "(allowed: 0 <= value)"),
    ("augment.crop_scale=[2, 1]", "augment.crop_scale.0=2: Input should be less than or equal to 1 "
                                  "(allowed: 0 < value <= 1)"),
])
def test_a_bad_value_names_the_whole_allowed_range(override: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert line in str(caught.value)
