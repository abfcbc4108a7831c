"""No silent promotion and no unverified model passing as a published one (issue #12 item 9), with real models.

Publishing: a release without a passed gate verdict for its model is published but does not become champion,
and the CLI says why and how (`--promote`); `--promote` makes it champion and champion.json records the manual
promotion; a release whose gate.json (written by the real gate) passed that model becomes champion as before.
Scoring: a loose .onnx file is scored unverified (summary and every row); a model from the store is verified;
a local copy handed over with its registry record is verified only while its sha256 matches.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from medpipe.cli import main as cli_main
from medpipe.config import load_config
from medpipe.export import export_onnx
from medpipe.gate import gate_models
from medpipe.registry import publish_version, read_champion, resolve_model
from medpipe.release import stage_release_files
from medpipe.score import score_folder
from medpipe.store import LocalStore
from shipping_fixtures import TrainedRun, onnx_with_metadata, shipping_config
from shipping_fixtures import trained_run  # noqa: F401

# The demo's relaxed gate: 2-epoch models on 32 px images pass it, so the decision is a real "passed" one.
_LOOSE_GATE = ("gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false", "gate.refuse_collapsed=false")


def _release(run: TrainedRun, out: Path, name: str, version: str, gate_path: Path | None = None) -> Path:
    """A release folder built as `medpipe export` builds it (stage_release_files, then model.onnx last)."""
    stage_release_files(run.metrics[name].parent, out, gate_path)
    export_onnx(run.checkpoints[name], run.cache_dir, run.cfg, out / "model.onnx", run.metrics[name], version)
    return out


@pytest.fixture(scope="module")
def passed_gate(trained_run: TrainedRun) -> Path:  # noqa: F811
    """gate.json of a real gate decision that passed (first run: no champion)."""
    cfg = shipping_config(trained_run.work, *_LOOSE_GATE)
    out = trained_run.work / "promotion-gate.json"
    decision = gate_models(trained_run.metrics, cfg, out, store=LocalStore(trained_run.work / "no-champion"),
                           cache_dir=trained_run.cache_dir)
    assert decision["passed"], decision["reasons"]
    return out


@pytest.fixture(scope="module")
def ungated(trained_run: TrainedRun) -> Path:  # noqa: F811
    """`export --model custom_cnn` without a gate: no gate.json in the release."""
    return _release(trained_run, trained_run.work / "ungated", "custom_cnn", "v1")


def _cli_publish(folder: Path, store: Path, *extra: str) -> int:
    return cli_main(["publish", "--version-dir", str(folder), "--store", str(store), *extra])


def test_publish_without_a_gate_is_not_champion_until_promoted(ungated, tmp_path, capsys):
    store_dir = tmp_path / "store"
    assert _cli_publish(ungated, store_dir) == 0
    out, err = capsys.readouterr()
    assert "published: custom_cnn/v1" in out and "gate: NOT passed" in out
    assert "is NOT the champion" in err and "gate.json does not exist" in err
    assert f"medpipe publish --version-dir {ungated} --model-name custom_cnn --version v1 --promote" in err
    store = LocalStore(store_dir)
    assert read_champion(store) is None
    manifest = json.loads(store.get_bytes("models/custom_cnn/v1/manifest.json"))
    assert manifest["gate_verdict"]["passed"] is False and "without a gate decision" in manifest["gate_verdict"]["reason"]

    # Asked explicitly: the same version becomes champion, and the pointer says it never passed a gate.
    assert _cli_publish(ungated, store_dir, "--promote") == 0
    out, _ = capsys.readouterr()
    assert "unchanged: custom_cnn/v1" in out and "champion: now custom_cnn/v1 by MANUAL promotion" in out
    champion = read_champion(store)
    assert (champion["model_name"], champion["version"]) == ("custom_cnn", "v1")
    assert champion["promotion"] == "manual" and champion["promoted_without_gate"] is True
    assert "--promote" in champion["promotion_reason"] and "gate.json does not exist" in champion["promotion_reason"]
    assert cli_main(["models", "show", "--store", str(store_dir)]) == 0
    shown = capsys.readouterr().out
    assert "custom_cnn/v1  (champion)" in shown and "gate:         NOT passed" in shown
    assert "champion by MANUAL promotion, no passed gate" in shown


def test_another_models_verdict_does_not_promote(trained_run, passed_gate, tmp_path, capsys):  # noqa: F811
    challenger = json.loads(passed_gate.read_text())["challenger"]
    other = next(name for name in trained_run.metrics if name != challenger)
    release = _release(trained_run, tmp_path / "other", other, "v2", passed_gate)
    assert _cli_publish(release, tmp_path / "store") == 0
    err = capsys.readouterr().err
    assert f"is the gate decision for {challenger} (passed), not for {other}" in err
    assert read_champion(LocalStore(tmp_path / "store")) is None


def test_a_passed_gate_makes_the_champion_as_before(trained_run, passed_gate, tmp_path):  # noqa: F811
    challenger = json.loads(passed_gate.read_text())["challenger"]
    release = _release(trained_run, tmp_path / "release", challenger, "v3", passed_gate)
    store = LocalStore(tmp_path / "store")
    result = publish_version(store, release, challenger, "v3")
    assert result["champion_updated"] and result["promotion"] == "gate" and result["champion_reason"] is None
    champion = read_champion(store)
    assert champion["version"] == "v3" and champion["promotion"] == "gate" and not champion["promoted_without_gate"]
    # make_champion=False still keeps the pointer where it is, even for a passed version.
    again = publish_version(store, _release(trained_run, tmp_path / "r4", challenger, "v4", passed_gate),
                            challenger, "v4", make_champion=False)
    assert not again["champion_updated"] and read_champion(store)["version"] == "v3"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_loose_model_file_is_scored_unverified(trained_run, ungated, tmp_path, caplog):  # noqa: F811
    tampered = tmp_path / "elsewhere" / "model.onnx"
    tampered.parent.mkdir()
    shutil.copyfile(ungated / "model.onnx", tampered)
    cfg = load_config(None, ["score.provider=cpu"])
    with caplog.at_level("WARNING", logger="medpipe.score"):
        summary = score_folder(tampered, trained_run.data_root / "val", tmp_path / "loose.csv", cfg)
    assert summary["verified"] is False and summary["model_version"] == "v1"
    assert f"model file {tampered} is unverified" in summary["verification"]
    assert "outside the model store" in summary["verification"]
    assert any("UNVERIFIED model" in r.getMessage() for r in caplog.records)
    rows = _rows(tmp_path / "loose.csv")
    assert rows and {r["model_verified"] for r in rows} == {"false"}


def test_a_model_from_the_store_is_verified(trained_run, ungated, tmp_path):  # noqa: F811
    store = LocalStore(tmp_path / "store")
    publish_version(store, ungated, "custom_cnn", "v1", promote=True)
    cfg = load_config(None, ["score.provider=cpu"])
    images = trained_run.data_root / "val"
    summary = score_folder("custom_cnn/v1", images, tmp_path / "store.csv", cfg, store=store)
    assert summary["verified"] is True and "verified against its manifest" in summary["verification"]
    assert {r["model_verified"] for r in _rows(tmp_path / "store.csv")} == {"true"}

    # The inbox's way: resolve (download + verify) first, then score the local copy with its registry record.
    path, source = resolve_model(store, "custom_cnn/v1", tmp_path / "dl")
    copied = score_folder(path, images, tmp_path / "copy.csv", cfg, registry_source=source)
    assert copied["verified"] is True and {r["model_verified"] for r in _rows(tmp_path / "copy.csv")} == {"true"}
    # A file edited after it was resolved no longer matches its record: unverified, and the reason says why.
    edited = onnx_with_metadata(path, tmp_path / "edited.onnx", note="edited by hand")
    changed = score_folder(edited, images, tmp_path / "edited.csv", cfg, registry_source=source)
    assert changed["verified"] is False and f"is not the {source['sha256']} recorded for" in changed["verification"]
    assert {r["model_verified"] for r in _rows(tmp_path / "edited.csv")} == {"false"}
