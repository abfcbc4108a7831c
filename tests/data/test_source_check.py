"""source_confound: the class told apart by file format, stored mode or native size alone (a shortcut)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from medpipe_testdata import CLASSES, synthetic_image, write_dataset
from PIL import Image

from medpipe.config import ConfigError, load_config
from medpipe.data.source_check import attribute_balanced_accuracy
from medpipe.data.validate import validate_dataset


def test_the_leave_one_out_rule_cannot_memorise() -> None:
    labels = ["normal"] * 6 + ["benign"] * 3 + ["cancer"] * 3
    assert attribute_balanced_accuracy(["png"] * 12, labels) == pytest.approx(1 / 3)  # one value: no evidence
    assert attribute_balanced_accuracy([f"{i}x{i}" for i in range(12)], labels) == pytest.approx(1 / 3)  # unique
    assert attribute_balanced_accuracy(["png"] * 6 + ["jpg"] * 6, labels) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert attribute_balanced_accuracy(["a"] * 6 + ["b"] * 3 + ["c"] * 3, labels) == pytest.approx(1.0)


def test_normals_from_another_source_are_reported_with_the_values_per_class(tmp_path: Path) -> None:
    """Normals as 16-bit 48 px PNGs, lesions as 8-bit 40 px JPEGs: as when two archives are merged."""
    root = tmp_path / "data"
    patient = 0
    for split in ("train", "val"):
        for label_index, label in enumerate(CLASSES):
            (root / split / label).mkdir(parents=True)
            for _ in range(4):
                patient += 1
                name = root / split / label / f"P_{patient:05d}_LEFT_CC"
                if label == "normal":
                    pixels = synthetic_image(label_index, patient, 48).astype("uint16") * 257
                    Image.fromarray(pixels).save(f"{name}.png")
                else:
                    Image.fromarray(synthetic_image(label_index, patient, 40)).save(f"{name}.jpg", quality=95)
    report = validate_dataset(root, load_config(None, []), tmp_path / "out")
    assert report.ok  # a warning by default: the run can go on, the report says it
    found = {f.message.split(" alone")[0]: f for f in report.warnings if f.check == "source_confound"}
    assert set(found) == {"the file format", "the stored mode", "the native size"}
    message = found["the native size"].message
    assert message.startswith("the native size alone tells normal (1.00) apart from the other classes")
    assert "normal: 48x48 8; benign: 40x40 8; cancer: 40x40 8" in message  # benign vs cancer: no clue, not named
    assert found["the file format"].paths == sorted(f"{s}/{c}" for s in ("train", "val") for c in CLASSES)
    saved = json.loads(report.json_path.read_text())
    assert saved["source_confounds"]["file format"]["values"]["normal"] == {".png": 8}
    assert "| native size | 1.0 | 0.75 | 0.75 |" in report.md_path.read_text()
    strict = load_config(None, ["validate.severity.source_confound=error"])
    assert not validate_dataset(root, strict, tmp_path / "strict").ok


def test_a_uniform_dataset_is_not_reported(tmp_path: Path) -> None:
    report = validate_dataset(write_dataset(tmp_path / "data", per_class=3, size=32), load_config(None, []),
                              tmp_path / "out")
    assert [f for f in report.warnings if f.check == "source_confound"] == []
    assert report.stats["source_confounds"]["native size"]["balanced_accuracy"] == {c: 0.5 for c in CLASSES}


def test_threshold_outside_zero_to_one_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"validate.source_confound_threshold.*\(0, 1\].*got 1.5"):
        load_config(None, ["validate.source_confound_threshold=1.5"])
