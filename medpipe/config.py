"""Typed configuration: one YAML file -> validated, kw_only dataclasses.

Unknown keys and bad values are errors that name the key, the value and what is allowed (pydantic does the
checking; we only reword its messages). Every stage saves the resolved config beside its outputs.

The data sections live here; training's in medpipe.config_training, shipping's in medpipe.config_shipping (all
importable from here), and the number types that give every setting its range in medpipe.config_types.
"""

from __future__ import annotations

import copy
import logging
import typing
from dataclasses import asdict, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError, model_validator
from pydantic.dataclasses import dataclass

from medpipe.config_shipping import ExportConfig, GateConfig, ScoreConfig, StoreConfig
from medpipe.config_training import (AugmentConfig, CustomCnnConfig, EvaluateConfig, ModelsConfig,
                                     ResnetConfig, TrainConfig)
from medpipe.config_types import STRICT, UNION_TAGS, Count, Float, Int, allowed_range
from medpipe.fileio import atomic_write_text

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ValidateConfig",
    "AugmentConfig",
    "TrainConfig",
    "ResnetConfig",
    "CustomCnnConfig",
    "ModelsConfig",
    "EvaluateConfig",
    "GateConfig",
    "ExportConfig",
    "StoreConfig",
    "ScoreConfig",
    "load_config",
    "config_to_dict",
    "save_config",
    "DEFAULT_CONFIG_NAME",
]

_logger = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "default.yaml"
# Every validation check and the severity it gets unless the config says otherwise.
VALIDATION_CHECKS = {
    "unreadable": "error",  # zero-byte, truncated, not an image, cannot be decoded
    "too_large": "error",  # more pixels than data.max_pixels (decompression bomb guard)
    "outside_root": "error",  # a symlink that leads outside the data root
    "missing_split": "error",  # train or val folder missing (test is optional)
    "empty_class": "error",  # a class folder missing or without images in a split
    "unknown_folder": "warning",  # a folder that is neither a known split nor a known class
    "not_an_image": "warning",  # a file whose extension is not an image format we read
    "duplicate_within_split": "warning",  # identical decoded pixels twice in one split
    "duplicate_cross_split": "error",  # identical decoded pixels in two splits (leakage)
    "label_conflict": "error",  # identical decoded pixels under two labels
    "near_duplicate": "warning",  # 64-bit phash candidates confirmed by a 256-bit phash (validate.near_duplicate_*)
    "patient_leakage": "warning",  # one patient id in two splits
    "mask_like": "warning",  # at most two distinct pixel values: a segmentation mask or a blank, not an image
    "source_confound": "warning",  # file format, stored mode or native size alone tells a class apart
}
Severity = Literal["error", "warning", "ignore"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key, the value and what is allowed."""


@dataclass(kw_only=True, config=STRICT)
class DataConfig:
    classes: list[str] = field(default_factory=lambda: ["normal", "benign", "cancer"])  # output order
    # Folder names accepted for a class (folder -> class).
    label_aliases: dict[str, str] = field(default_factory=lambda: {"malignant": "cancer"})
    image_size: Int = 224  # images are resized to image_size x image_size, single channel
    max_pixels: Count = 64_000_000  # larger images are refused: a guard against decompression bombs
    # Patient id = first group of this regex on the file name. Default fits DDSM/CBIS-DDSM names:
    # A_0003_1.LEFT_CC.jpg -> A_0003_1, P_00001_LEFT_CC.jpg -> P_00001 (the part before the laterality).
    patient_id_pattern: str = r"^(.+?)[._-](?:LEFT|RIGHT)(?:[._-]|$)"
    # "auto": a DICOM file's PatientID element when it has one, else the pattern; "file_name": the pattern only.
    patient_id_source: Literal["auto", "file_name"] = "auto"
    # What training does with train images whose patient also appears in val/test, or whose decoded pixels equal
    # a val/test image's: keep them (report only) or drop them, so that validation is disjoint and honest.
    leakage: Literal["report", "exclude_from_train"] = "exclude_from_train"
    # File names (glob, case-insensitive) that are never images to learn from, skipped everywhere (validation
    # lists them). Default: segmentation masks stored beside their images, as in the public breast-ultrasound set
    # (BUSI: "benign (1).png" + "benign (1)_mask.png", "_mask_1.png"); a mask gives its class away.
    exclude: list[str] = field(default_factory=lambda: ["*_mask.*", "*_mask_*.*"])
    cache_dir: str = "~/.cache/medpipe"  # decoded uint8 arrays, keyed by the dataset manifest hash
    # Mammography: black out everything outside the largest bright region (the breast): film labels, markers,
    # scanner borders. On mammo-ddsm they carry class signal (README, "shortcuts"); off keeps every pixel.
    largest_region_only: bool = False

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes must be at least two distinct names, got {self.classes}")
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"data.image_size must be in 16..1024, got {self.image_size}")
        for pattern in self.exclude:
            if not pattern.strip() or "/" in pattern or "\\" in pattern:
                raise ValueError(f"data.exclude: {pattern!r} is not a file-name glob; expected a pattern such as "
                                 "'*_mask.*' (matched against file names, not paths)")
        for alias, target in self.label_aliases.items():
            if target not in self.classes:
                raise ValueError(f"data.label_aliases.{alias}={target!r} is not one of data.classes {self.classes}")


@dataclass(kw_only=True, config=STRICT)
class ValidateConfig:
    # Per-check severity; "error" fails `medpipe validate` (non-zero exit) and the pipeline.
    severity: dict[str, Severity] = field(default_factory=lambda: dict(VALIDATION_CHECKS))
    # Near-duplicates are found in two stages. Candidates: 64-bit phash within this Hamming distance (one word
    # per image, cheap). Re-encoded (JPEG q60-95), resized (+-10 %) or brightened (+-10 %) copies of 400 real
    # mammograms reach 8 at most, so 10 screens them all (20k pairs on mammo-ddsm). Alone it is useless: at 4 it
    # flagged 360 pairs of different patients whose breast outlines look alike; hence the confirmation below.
    near_duplicate_distance: Int = 10
    # Confirmed: 256-bit phash (hash_size=16, sees texture, not just the outline) within this distance.
    # Evidence (mammo-ddsm, 2,766 images): those copies median 2, p95 4, max 6 (an additive shift of +-10 % of
    # full scale: median 4, p95 20); closest pair of different patients 30, then 32, 32, 32 (the old 360 false
    # alarms 36-112). 20 sits between: it confirmed 358 of 360 such copies injected into the data, and nothing else.
    # Known gap: crops of 2-5 % (median 42) and 1-2 deg rotations (median 30) move this hash as far as a different
    # patient does, so such copies are mostly not confirmed.
    near_duplicate_confirm_distance: Int = 20
    # source_confound fires when file format, stored mode or native size alone tells a class from the others
    # with at least this balanced accuracy (leave-one-out, one-vs-rest; chance 0.5): medpipe/data/source_check.py.
    source_confound_threshold: Float = 0.8

    def __post_init__(self) -> None:
        unknown = sorted(set(self.severity) - set(VALIDATION_CHECKS))
        if unknown:
            raise ValueError(f"validate.severity has unknown checks {unknown}; allowed: {sorted(VALIDATION_CHECKS)}")
        self.severity = {**VALIDATION_CHECKS, **self.severity}
        if not 0 <= self.near_duplicate_distance <= 64:
            raise ValueError(f"validate.near_duplicate_distance must be in 0..64 (bits of a 64-bit hash), "
                             f"got {self.near_duplicate_distance}")
        if not 0 < self.source_confound_threshold <= 1:
            raise ValueError(f"validate.source_confound_threshold must be in (0, 1] (a balanced accuracy), "
                             f"got {self.source_confound_threshold}")
        if not 0 <= self.near_duplicate_confirm_distance <= 256:
            raise ValueError(f"validate.near_duplicate_confirm_distance must be in 0..256 (bits of a 256-bit hash), "
                             f"got {self.near_duplicate_confirm_distance}")


@dataclass(kw_only=True, config=STRICT)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        weights = self.train.class_weights
        if isinstance(weights, list) and len(weights) != len(self.data.classes):
            raise ValueError(
                f"train.class_weights has {len(weights)} values but data.classes has {len(self.data.classes)} "
                f"({self.data.classes}); give one weight per class, 'auto' or 'none'"
            )
        known = [*self.models.names, *(["ensemble"] if self.evaluate.ensemble and len(self.models.names) > 1 else [])]
        unknown = [name for name in self.gate.candidates if name not in known]
        if unknown:
            raise ValueError(f"gate.candidates names {unknown}, which this run does not make; allowed: {known} "
                             "(models.names, and 'ensemble' when evaluate.ensemble is on with two or more models)")
        return self


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` override; the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override {assignment!r}: empty key in {dotted!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {dotted}: cannot parse value {raw!r}: {exc}") from exc
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """Reword pydantic's errors as one line per bad setting: `key=value: what is allowed`."""
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if p not in UNION_TAGS) or "<root>"
        value = err.get("input")
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"] or (err["type"] == "value_error" and message.startswith(f"{key}.")):
            lines.append(f"  {message}")  # a section's own check: the message already names the keys
        elif err["type"] == "unexpected_keyword_argument" or err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {value!r})")
        elif err["type"] == "value_error":
            lines.append(f"  {key}: {message}")
        else:
            allowed = allowed_range(_field_type([p for p in err["loc"] if p not in UNION_TAGS]))
            lines.append(f"  {key}={value!r}: {message}" + (f" (allowed: {allowed})" if allowed else ""))
    return "\n".join(lines)


def _field_type(loc: list[Any]) -> Any:
    """The annotated type of the setting at `loc` (section, key, list index ...), None when there is none."""
    tp: Any = Config
    for part in loc:
        while typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if isinstance(part, int) and typing.get_origin(tp) is typing.Union:  # a list or a rule name: the list
            tp = next((a for a in typing.get_args(tp) if typing.get_origin(
                typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a) is list), None)
            while typing.get_origin(tp) is typing.Annotated:
                tp = typing.get_args(tp)[0]
        if isinstance(part, int) and typing.get_origin(tp) in (list, tuple):
            args = typing.get_args(tp)
            tp = args[min(part, len(args) - 1)] if typing.get_origin(tp) is tuple else args[0]
        elif isinstance(part, str) and hasattr(tp, "__dataclass_fields__") and part in tp.__dataclass_fields__:
            tp = typing.get_type_hints(tp, include_extras=True)[part]
        else:
            return None
    return tp


def _default_tree() -> dict[str, Any]:
    text = resources.files("medpipe.configs").joinpath(DEFAULT_CONFIG_NAME).read_text()
    return yaml.safe_load(text) or {}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        replaced_whole = key in ("label_aliases", "min_metrics")  # mappings a user states in full
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not replaced_whole:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(tree: dict[str, Any], source: str = "<dict>") -> Config:
    """Turn a nested dict into a validated Config; errors name every bad key and value."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(tree).__name__}")
    allowed = {f for f in Config.__dataclass_fields__}
    unknown = sorted(set(tree) - allowed)
    if unknown:
        raise ConfigError(f"invalid configuration ({source}): unknown section(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        return Config(**tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid configuration ({source}): {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load the packaged defaults, merge a YAML file over them, then apply `section.key=value` overrides.

    Args:
        path: YAML file; None uses the packaged default config alone.
        overrides: `--set` strings, applied in order.

    Returns:
        The validated Config.
    """
    tree = _default_tree()
    source = "default config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(user, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
        tree = _merge(tree, user)
        source = str(path)
    for assignment in overrides:
        _apply_override(tree, assignment)
    if overrides:
        source += " + --set " + " ".join(overrides)
    return build_config(tree, source)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of the config (tuples become lists), for YAML/JSON."""

    def _plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_plain(v) for v in value]
        return value

    return _plain(asdict(cfg))


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config saved by save_config / config_to_dict (no defaults merged in)."""
    return build_config(tree, "saved config")


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (temp file, then rename: never half-written); returns the path."""
    return atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
