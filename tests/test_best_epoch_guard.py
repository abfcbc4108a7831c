"""The guard on the best epoch end to end: training keeps a collapsed epoch out of best.pt while another epoch
qualifies, records a model with no qualifying epoch as collapsed (checkpoint meta, history.json, warning, model
card, metrics.json), and the gate refuses that model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import medpipe.training_loop as training_loop
from medpipe.config import Config, load_config
from medpipe.data.cache import build_cache
from medpipe.evaluate.stage import evaluate_model
from medpipe.gate import gate_models
from medpipe.train import train_model
from medpipe_testdata import write_dataset


def _config(work: Path, *extra: str) -> Config:
    return load_config(None, ["data.image_size=32", f"data.cache_dir={work / 'cache'}", "train.epochs=2",
                              "train.batch_size=8", "train.patience=5", "train.device=cpu",
                              "models.resnet18.weights=none", "evaluate.splits=[val]",
                              "evaluate.bootstrap_resamples=0", "evaluate.explain_per_class=0",
                              "evaluate.outside_region_check=false", "gate.min_metrics={macro_auc: 0.0}", *extra])


@dataclass
class CollapsedRun:
    work: Path
    cache_dir: Path
    cfg: Config
    model_dir: Path
    metrics: Path
    log: str


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory: pytest.TempPathFactory) -> CollapsedRun:
    """custom_cnn that cannot learn (lr 1e-12): with the default class weights and balanced decision every epoch
    calls every image one class (balanced accuracy 1/3 on three classes)."""
    work = tmp_path_factory.mktemp("collapsed")
    cfg = _config(work, "train.lr=1e-12")
    cache_dir = build_cache(write_dataset(work / "data", per_class=8, size=40), cfg)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("medpipe.train").addHandler(handler)
    try:
        model_dir = train_model(cache_dir, "custom_cnn", cfg, work / "custom_cnn")
    finally:
        logging.getLogger("medpipe.train").removeHandler(handler)
    metrics = evaluate_model(model_dir / "best.pt", cache_dir, cfg, model_dir / "eval")
    log = "\n".join(f"{r.levelname} {r.getMessage()}" for r in records)
    return CollapsedRun(work, cache_dir, cfg, model_dir, metrics, log)


def test_no_qualifying_epoch_still_writes_best_pt_marked_collapsed(collapsed):
    history = json.loads((collapsed.model_dir / "history.json").read_text())
    assert all(r["qualified"] is False for r in history["history"])
    assert history["collapsed"] is True and history["best_epoch_qualified"] is False
    assert "no epoch of 2 qualified" in history["qualification"]["reason"]
    assert (collapsed.model_dir / "last.pt").is_file()
    meta = torch.load(collapsed.model_dir / "best.pt", weights_only=False)["meta"]
    assert meta["qualified"] is False and meta["epoch"] == history["best_epoch"]
    facts = meta["qualification"]
    assert facts["margin"] == 0.05 and facts["chance"] == pytest.approx(1 / 3)
    assert facts["balanced_accuracy"] <= facts["required"] and "collapsed" in facts["reason"]
    assert "WARNING custom_cnn: no epoch of 2 qualified" in collapsed.log and "gate refuses" in collapsed.log


def test_evaluation_copies_the_verdict_and_the_card_warns(collapsed):
    training = json.loads(collapsed.metrics.read_text())["training"]
    assert training["best_epoch_qualified"] is False
    assert training["qualification"]["required"] == pytest.approx(1 / 3 + 0.05)
    card = (collapsed.metrics.parent / "model_card.md").read_text()
    assert "Warning: collapsed model" in card and "NO (collapsed)" in card


def test_gate_refuses_a_model_with_no_qualifying_epoch(collapsed, tmp_path):
    decision = gate_models({"custom_cnn": collapsed.metrics}, collapsed.cfg, tmp_path / "gate.json")
    check = next(c for c in decision["checks"] if c["name"] == "best_epoch_qualified")
    assert decision["passed"] is False and check["passed"] is False
    assert "val balanced accuracy" in check["reason"] and "train.min_balanced_accuracy_margin 0.05" in check["reason"]
    assert check["reason"] in decision["reasons"]


def _variant(metrics: Path, dest: Path, model: str, macro_auc: float | None = None, **training: object) -> Path:
    """A copy of metrics.json as another model, with training facts changed (None drops a key)."""
    data = json.loads(metrics.read_text())
    data["model"] = model
    for key, value in training.items():
        if value is None:
            data["training"].pop(key, None)
        else:
            data["training"][key] = value
    if macro_auc is not None:
        data["splits"]["val"]["macro_auc"] = macro_auc
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "metrics.json").write_text(json.dumps(data))
    return dest / "metrics.json"


def test_metrics_from_before_the_guard_pass_the_check_as_unknown(collapsed, tmp_path):
    old = _variant(collapsed.metrics, tmp_path / "old", "custom_cnn", best_epoch_qualified=None, qualification=None)
    decision = gate_models({"custom_cnn": old}, collapsed.cfg, tmp_path / "gate.json")
    check = next(c for c in decision["checks"] if c["name"] == "best_epoch_qualified")
    assert check["passed"] is True and "unknown" in check["reason"] and "before the guard" in check["reason"]


def test_the_challenger_is_picked_among_models_that_did_not_collapse(collapsed, tmp_path):
    fine = _variant(collapsed.metrics, tmp_path / "fine", "resnet18", macro_auc=0.1, best_epoch_qualified=True,
                    qualification={"reason": "val balanced accuracy 0.6 > 0.3833"})
    decision = gate_models({"custom_cnn": collapsed.metrics, "resnet18": fine}, collapsed.cfg, tmp_path / "g.json")
    assert decision["challenger"] == "resnet18"
    assert any(r.startswith("custom_cnn is not a candidate") for r in decision["reasons"])
    assert next(c for c in decision["checks"] if c["name"] == "best_epoch_qualified")["passed"] is True


def test_best_pt_is_not_taken_from_a_collapsed_epoch_when_one_qualifies(collapsed, monkeypatch, tmp_path):
    """Real training, scripted validation: epoch 1 collapses with the top macro AUC (the issue's resnet18),
    epochs 2-3 qualify, epoch 4 collapses again with an even higher AUC; best.pt must be epoch 3."""
    script = iter([(0.99, 0.343), (0.70, 0.55), (0.80, 0.60), (0.999, 0.35)])

    def scripted(state, cfg, data, device):
        auc, balanced = next(script)
        return {"val_loss": 1.0, "val_macro_auc": auc, "val_balanced_accuracy": balanced, "val_f1_macro": 0.3,
                "val_f1_weighted": 0.3, "val_accuracy": 0.3, "val_chance_balanced_accuracy": 1 / 3}

    monkeypatch.setattr(training_loop, "_validate", scripted)
    out = train_model(collapsed.cache_dir, "custom_cnn", _config(tmp_path, "train.epochs=4"), tmp_path / "m")
    history = json.loads((out / "history.json").read_text())
    assert [r["qualified"] for r in history["history"]] == [False, True, True, False]
    assert history["best_epoch"] == 3 and history["best_score"] == 0.80 and history["collapsed"] is False
    best = torch.load(out / "best.pt", weights_only=False)["meta"]
    assert best["epoch"] == 3 and best["qualified"] is True and "0.6000 > 0.3833" in best["qualification"]["reason"]
    last = torch.load(out / "last.pt", weights_only=False)["meta"]
    assert last["epoch"] == 4 and last["qualified"] is False


def test_the_guard_can_be_reported_instead_of_enforced(tmp_path) -> None:
    """gate.refuse_collapsed=false (the demo): a collapsed challenger is named in the reasons but not refused."""
    import json

    from medpipe.config import load_config
    from medpipe.gate import gate_models

    metrics = tmp_path / "m" / "metrics.json"
    metrics.parent.mkdir()
    split = {"n": 30, "accuracy": 0.33, "balanced_accuracy": 0.333, "f1_weighted": 0.2, "f1_macro": 0.2,
             "macro_auc": 0.9, "per_class": {c: {"recall": 1.0 if c == "normal" else 0.0, "precision": 0.3, "f1": 0.2,
                                                  "support": 10, "roc_auc": 0.9, "average_precision": 0.8}
                                              for c in ("normal", "benign", "cancer")},
             "confusion_matrix": [[10, 0, 0], [10, 0, 0], [10, 0, 0]],
             "baseline": {"majority_class": "normal", "majority_source": "given", "accuracy": 0.33,
                          "balanced_accuracy": 0.333, "f1_weighted": 0.2, "f1_macro": 0.2, "macro_auc": 0.5}}
    metrics.write_text(json.dumps({
        "model": "custom_cnn", "classes": ["normal", "benign", "cancer"], "manifest_hash": "h",
        "training": {"best_epoch": 2, "best_epoch_qualified": False,
                     "qualification": {"reason": "best epoch 2: val balanced accuracy 0.333 <= 0.383"}},
        "splits": {"val": split}}))
    loose = ["gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false"]
    refused = gate_models({"custom_cnn": metrics}, load_config(None, loose), tmp_path / "a.json")
    assert refused["passed"] is False
    reported = gate_models({"custom_cnn": metrics}, load_config(None, [*loose, "gate.refuse_collapsed=false"]),
                           tmp_path / "b.json")
    assert reported["passed"] is True
    assert any("not enforced (gate.refuse_collapsed=false)" in reason for reason in reported["reasons"])
