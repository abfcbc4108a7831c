"""predictions.json (medpipe.paired_predictions): written from evaluation's own predictions CSV without names or
patient ids, published with a real export, and paired only with a version scored on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES
from medpipe.evaluate.stage import _write_predictions
from medpipe.paired_predictions import paired_difference, write_paired_predictions


def _record(tmp_path: Path, name: str, probs: np.ndarray, rels: list[str] | None = None) -> dict:
    rels = rels or [f"val/{CLASSES[i % 3]}/P_{i // 2:05d}_LEFT_CC.png" for i in range(len(probs))]
    patients = [f"P_{i // 2:05d}" for i in range(len(probs))]
    labels = np.arange(len(probs)) % 3
    _write_predictions(tmp_path / f"{name}.csv", rels, patients, labels, probs, CLASSES)  # evaluation's writer
    path = write_paired_predictions(tmp_path / f"{name}.csv", "val", CLASSES, "f" * 64, tmp_path / f"{name}.json")
    return json.loads(path.read_text())


def _probs(n: int, skill: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), np.arange(n) % 3] += skill
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_the_record_keeps_labels_probabilities_and_patient_groups_but_no_names(tmp_path: Path) -> None:
    record = _record(tmp_path, "a", _probs(30, 1.0, 0))
    text = json.dumps(record)
    assert "P_0" not in text and "LEFT_CC" not in text and "val/" not in text
    assert record["labels"] == [i % 3 for i in range(30)] and record["groups"] == [i // 2 for i in range(30)]
    assert record["split"] == "val" and len(record["order_sha256"]) == 64 and len(record["probs"]) == 30


def test_a_better_model_pairs_ahead_and_identical_ones_pair_at_zero(tmp_path: Path) -> None:
    weak, strong = _record(tmp_path, "weak", _probs(90, 0.3, 1)), _record(tmp_path, "strong", _probs(90, 3.0, 2))
    ahead = paired_difference(weak, strong, resamples=200)
    assert ahead["macro_auc"]["difference"] > 0.2 and ahead["macro_auc"]["interval"][0] > 0
    same = paired_difference(weak, weak, resamples=200)
    assert same["macro_auc"]["difference"] == 0 and same["macro_auc"]["interval"] == [0.0, 0.0]


def test_versions_scored_on_other_images_are_not_paired(tmp_path: Path) -> None:
    a = _record(tmp_path, "a", _probs(30, 1.0, 0))
    other = _record(tmp_path, "other", _probs(30, 1.0, 0), rels=[f"val/x/{i}.png" for i in range(30)])
    with pytest.raises(ValueError, match=r"different images \(or their order\)"):
        paired_difference(a, other)
    with pytest.raises(ValueError, match="different split"):
        paired_difference(a, {**a, "split": "test"})


def test_a_missing_column_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("rel,true,prob_normal\nval/a.png,normal,1.0\n")
    with pytest.raises(ValueError, match=r"p.csv: expected rows with columns .*missing \['patient'"):
        write_paired_predictions(tmp_path / "p.csv", "val", CLASSES, "f" * 64, tmp_path / "p.json")
