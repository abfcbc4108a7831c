"""Batch scoring with ONNX Runtime: rows + errors file, resume, refusals, tampered models, and parity with the
torch evaluation path on the very same files."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.config import ConfigError
from medpipe.data.cache import load_cache
from medpipe.evaluate.predict import predict_probs
from medpipe.export import export_module, export_onnx, model_metadata
from medpipe.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER, choose_providers
from medpipe.preprocess import load_image
from medpipe.priors import apply_prior_correction
from medpipe.registry import IntegrityError, publish_version
from medpipe.score import ScoreError, errors_path_for, score_folder
from medpipe.store import LocalStore
from medpipe.train import load_checkpoint
from shipping_fixtures import PRIOR_KEYS, TrainedRun, checkpoint_with_meta, onnx_with_metadata, shipping_config
from shipping_fixtures import trained_run  # noqa: F401

_CLASSES = ("normal", "benign", "cancer")
_PROBS = [f"prob_{c}" for c in _CLASSES]
_RISKS = [f"risk_{c}" for c in _CLASSES]
# Factors of a set where normal dominates, as in screening: risks differ visibly from the balanced probabilities.
_SKEWED = [0.6, 0.3, 0.1]


@pytest.fixture(scope="module")
def model_dir(trained_run: TrainedRun) -> Path:  # noqa: F811
    """custom_cnn exported as version v1, with its metrics.json beside it (a publishable folder)."""
    out = trained_run.work / "score-model"
    export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg, out / "model.onnx",
                trained_run.metrics["custom_cnn"], "v1")
    shutil.copyfile(trained_run.metrics["custom_cnn"], out / "metrics.json")
    return out


def _export_variant(run: TrainedRun, name: str, **meta_changes) -> Path:
    """custom_cnn exported as version v1 from a copy of its checkpoint with `meta_changes` applied."""
    checkpoint = checkpoint_with_meta(run.checkpoints["custom_cnn"], run.work / name / "best.pt", **meta_changes)
    return export_onnx(checkpoint, run.cache_dir, run.cfg, run.work / name / "model.onnx", version="v1")


@pytest.fixture(scope="module")
def skewed_model(trained_run: TrainedRun) -> Path:  # noqa: F811
    """custom_cnn exported from its checkpoint with the factors of an imbalanced training set."""
    return _export_variant(trained_run, "skewed", prior_correction=_SKEWED)


@pytest.fixture(scope="module")
def legacy_model(trained_run: TrainedRun) -> Path:  # noqa: F811
    """custom_cnn exported, as the same version v1, from a checkpoint written before training recorded priors."""
    return _export_variant(trained_run, "legacy", drop=PRIOR_KEYS)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _images_folder(trained_run: TrainedRun, dest: Path) -> Path:  # noqa: F811
    """The val images of the run under nested folders (class folders as they are on disk)."""
    shutil.copytree(trained_run.data_root / "val", dest)
    return dest


def test_scores_images_and_lists_bad_files(trained_run, model_dir, tmp_path):  # noqa: F811
    folder = _images_folder(trained_run, tmp_path / "in")
    n_images = len(list(folder.rglob("*.png")))
    good = next(folder.rglob("*.png")).read_bytes()
    (folder / "broken").mkdir()
    (folder / "broken" / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "broken" / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "preds.csv"
    summary = score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg)

    rows = _read(out)
    assert len(rows) == n_images == summary["scored"] and summary["kept"] == 0
    assert list(rows[0]) == ["path", "predicted", *_PROBS, *_RISKS, "model_verified", "model_version"]
    assert {r["model_version"] for r in rows} == {"v1"} and summary["model_version"] == "v1"
    assert all(r["path"].split("/")[0] in ("normal", "benign", "cancer") for r in rows)
    factors = torch.load(trained_run.checkpoints["custom_cnn"], weights_only=False)["meta"]["prior_correction"]
    assert summary["prior_correction"] == factors
    _check_rows(rows, factors)
    errors = {e["path"]: e["reason"] for e in _read(errors_path_for(out))}
    assert set(errors) == {"broken/truncated.png", "broken/empty.jpg", "notes.txt"}
    assert "empty" in errors["broken/empty.jpg"] and "unsupported file type '.txt'" in errors["notes.txt"]
    assert "truncated or corrupt" in errors["broken/truncated.png"]
    assert summary["errors"] == 3 and summary["files"] == n_images + 3
    assert summary["provider"] == CPU_PROVIDER  # this machine has no GPU; see test_provider_choice
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no temp files left"


def _check_rows(rows: list[dict[str, str]], factors: list[float]) -> None:
    """Probabilities and risks are distributions; risks are the corrected probabilities; the decision is raw."""
    probs = np.array([[float(r[c]) for c in _PROBS] for r in rows])
    risks = np.array([[float(r[c]) for c in _RISKS] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(risks.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(risks, apply_prior_correction(probs, factors), atol=1e-5, rtol=0)
    assert [r["predicted"] for r in rows] == [_CLASSES[i] for i in probs.argmax(axis=1)]


def test_risk_columns_are_the_prior_corrected_probabilities(trained_run, skewed_model, model_dir,  # noqa: F811
                                                            tmp_path):
    folder = trained_run.data_root / "val"
    summary = score_folder(skewed_model, folder, tmp_path / "skewed.csv", trained_run.cfg)
    assert summary["prior_correction"] == _SKEWED
    rows = _read(tmp_path / "skewed.csv")
    assert list(rows[0]) == ["path", "predicted", *_PROBS, *_RISKS, "model_verified", "model_version"]
    _check_rows(rows, _SKEWED)
    # Same weights as model_dir: the probabilities (and so the decisions) do not depend on the factors.
    score_folder(model_dir / "model.onnx", folder, tmp_path / "plain.csv", trained_run.cfg)
    plain = {r["path"]: r for r in _read(tmp_path / "plain.csv")}
    assert all([r[c] for c in ("predicted", *_PROBS)] == [plain[r["path"]][c] for c in ("predicted", *_PROBS)]
               for r in rows)
    probs = np.array([[float(r[c]) for c in _PROBS] for r in rows])
    risks = np.array([[float(r[c]) for c in _RISKS] for r in rows])
    assert np.abs(risks - probs).max() > 0.01, "the factors must visibly move the values, or this test proves nothing"


def test_model_without_correction_keeps_the_old_columns(trained_run, legacy_model, model_dir, tmp_path):  # noqa: F811
    folder = _images_folder(trained_run, tmp_path / "in")
    out = tmp_path / "preds.csv"
    summary = score_folder(legacy_model, folder, out, trained_run.cfg)
    assert summary["prior_correction"] is None
    rows = _read(out)
    assert list(rows[0]) == ["path", "predicted", *_PROBS, "model_verified", "model_version"]
    assert len(rows) == summary["scored"] > 0
    # Resuming that file with a model that adds risk columns (same version string) must not mix layouts.
    (folder / "later.png").write_bytes(next(folder.rglob("*.png")).read_bytes())
    before = out.read_text()
    with pytest.raises(ScoreError, match="it was written by another model") as info:
        score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg, resume=True)
    assert "risk_normal" in str(info.value)
    assert out.read_text() == before


def test_malformed_prior_correction_refuses_scoring(trained_run, model_dir, tmp_path):  # noqa: F811
    bad = onnx_with_metadata(model_dir / "model.onnx", tmp_path / "bad.onnx", prior_correction="[1,2]")
    folder = _images_folder(trained_run, tmp_path / "in")
    with pytest.raises(ValueError, match=r"bad\.onnx: metadata 'prior_correction' must be a list of 3"):
        score_folder(bad, folder, tmp_path / "preds.csv", trained_run.cfg)
    assert not list(tmp_path.glob("*.csv"))


def test_onnx_scoring_equals_torch_evaluation_path(trained_run, model_dir, tmp_path):  # noqa: F811
    """Same files: score_folder (load_image -> ONNX) vs predict_probs on load_image output and on the cache."""
    folder = trained_run.data_root / "val"
    out = tmp_path / "preds.csv"
    score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg)
    scored = {r["path"]: [float(r[f"prob_{c}"]) for c in ("normal", "benign", "cancer")] for r in _read(out)}

    val = load_cache(trained_run.cache_dir).splits["val"]
    rels = [rel.removeprefix("val/") for rel in val.rels]
    assert sorted(rels) == sorted(scored)
    decoded = np.stack([load_image(folder / rel, 32) for rel in rels])
    np.testing.assert_array_equal(decoded, val.images)  # scoring decodes exactly what evaluation saw
    model, _ = load_checkpoint(trained_run.checkpoints["custom_cnn"])
    torch_probs = predict_probs(model, decoded, "cpu", 64)
    onnx_probs = np.array([scored[rel] for rel in rels])
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_probs, predict_probs(model, val.images, "cpu", 64), atol=1e-4, rtol=0)


def test_existing_output_is_kept_and_resume_scores_only_new_files(trained_run, model_dir, tmp_path):  # noqa: F811
    folder = _images_folder(trained_run, tmp_path / "in")
    out = tmp_path / "preds.csv"
    first = score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg)
    before = out.read_text()
    with pytest.raises(ScoreError, match="already exists; pass --resume"):
        score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg)
    assert out.read_text() == before

    # Two new files arrive; one already-scored file is now corrupt: resume must not even read it again.
    new = folder / "later"
    new.mkdir()
    pngs = sorted(folder.rglob("*.png"))
    shutil.copyfile(pngs[0], new / "a.png")
    shutil.copyfile(pngs[1], new / "b.png")
    already = sorted((folder / "normal").glob("*.png"))[0]
    already.write_bytes(b"garbage")
    second = score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg, resume=True)
    assert (second["kept"], second["scored"], second["errors"]) == (first["scored"], 2, 0)
    rows = _read(out)
    assert len(rows) == first["scored"] + 2
    assert {r["path"] for r in rows[-2:]} == {"later/a.png", "later/b.png"}
    assert out.read_text().startswith(before), "the earlier rows are kept byte for byte"
    assert rows[-2]["prob_normal"] == next(r for r in rows if r["path"] == pngs[0].relative_to(folder).as_posix())[
        "prob_normal"]

    again = score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg, overwrite=True)
    assert again["kept"] == 0 and again["errors"] == 1  # the corrupt file now counts


def _found(folder: Path) -> set[str]:
    """Every file under `folder`, as score_folder names it (found independently of medpipe.score)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _assert_each_file_once(folder: Path, out: Path, summary: dict) -> None:
    """The predictions and the errors file together hold every file under `folder` exactly once, and no other."""
    predicted = [r["path"] for r in _read(out)]
    refused = [e["path"] for e in _read(errors_path_for(out))]
    assert len(set(predicted)) == len(predicted) and len(set(refused)) == len(refused), "a file listed twice"
    assert not set(predicted) & set(refused), "a file both predicted and refused"
    assert set(predicted) | set(refused) == _found(folder)
    assert summary["files"] == len(_found(folder)) == summary["scored"] + summary["kept"] + summary["errors"]


def test_every_file_is_in_exactly_one_output_also_on_resume(trained_run, model_dir, tmp_path, caplog):  # noqa: F811
    folder = _images_folder(trained_run, tmp_path / "in")
    pngs = sorted(folder.rglob("*.png"))
    (folder / "bad").mkdir()
    (folder / "bad" / "corrupt.png").write_bytes(pngs[0].read_bytes()[:50])
    (folder / "bad" / "notes.txt").write_text("not an image")
    shutil.copyfile(pngs[1], folder / "bad" / "scan_mask.png")  # matches data.exclude: refused, not scored
    out = tmp_path / "preds.csv"
    first = score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg)
    _assert_each_file_once(folder, out, first)
    assert first["errors"] == 3 and first["dropped"] == 0

    # Resume after the folder changed: a scored file left, another is now excluded, a new one and a corrupt one
    # arrived. The kept rows count towards "exactly once": the two stale rows go, with a warning naming them.
    gone, now_excluded = pngs[2].relative_to(folder).as_posix(), pngs[3].relative_to(folder).as_posix()
    pngs[2].unlink()
    shutil.copyfile(pngs[4], folder / "bad" / "new.png")
    (folder / "bad" / "new-corrupt.png").write_bytes(b"garbage")
    cfg = shipping_config(trained_run.work, f"data.exclude=['*_mask.*', '{pngs[3].name}']")
    with caplog.at_level("WARNING", logger="medpipe.score"):
        second = score_folder(model_dir / "model.onnx", folder, out, cfg, resume=True)
    _assert_each_file_once(folder, out, second)
    assert (second["kept"], second["scored"], second["dropped"]) == (first["scored"] - 2, 1, 2)
    assert now_excluded in {e["path"] for e in _read(errors_path_for(out))}
    assert any("dropped 2 row(s)" in r.message and gone in r.message and now_excluded in r.message
               for r in caplog.records)


def test_a_file_lost_on_the_way_is_an_error_not_a_gap(trained_run, model_dir, tmp_path):  # noqa: F811
    """score.batch_size 0 (refused by the config since) decoded nothing and wrote an empty CSV; forced past the
    config, it now stops scoring with the counts, and no output is written."""
    folder = _images_folder(trained_run, tmp_path / "in")
    cfg = copy.deepcopy(trained_run.cfg)
    object.__setattr__(cfg.score, "batch_size", 0)  # past validate_assignment, as a bug in batching would be
    out = tmp_path / "preds.csv"
    n = len(_found(folder))
    with pytest.raises(ScoreError, match=rf"scoring lost track of files: {n} found, 0 prediction rows and 0 error "
                                         rf"rows; {n} in neither \(benign/.*, \.\.\.\)\. Nothing was written"):
        score_folder(model_dir / "model.onnx", folder, out, cfg)
    assert not out.exists() and not errors_path_for(out).exists()


def test_refusals(trained_run, model_dir, tmp_path):  # noqa: F811
    folder = _images_folder(trained_run, tmp_path / "in")
    with pytest.raises(ScoreError, match="inside the input folder"):
        score_folder(model_dir / "model.onnx", folder, folder / "preds.csv", trained_run.cfg)
    with pytest.raises(ScoreError, match="does not exist or is not a folder"):
        score_folder(model_dir / "model.onnx", tmp_path / "nope", tmp_path / "p.csv", trained_run.cfg)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        score_folder(tmp_path / "missing.onnx", folder, tmp_path / "p.csv", trained_run.cfg)
    # An output of another model version is never mixed with new rows.
    out = tmp_path / "p.csv"
    out.write_text("path,predicted,prob_normal,prob_benign,prob_cancer,risk_normal,risk_benign,risk_cancer,"
                   "model_verified,model_version\nx.png,normal,1,0,0,1,0,0,false,v0\n")
    with pytest.raises(ScoreError, match=r"model version\(s\) \['v0'\]"):
        score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg, resume=True)
    assert not (tmp_path / "p.errors.csv").exists()


def test_models_without_medpipe_metadata_or_other_preprocessing_are_refused(trained_run, tmp_path):  # noqa: F811
    model, meta = load_checkpoint(trained_run.checkpoints["custom_cnn"])
    folder = _images_folder(trained_run, tmp_path / "in")
    foreign = export_module(model, tmp_path / "foreign.onnx", 32, {})
    with pytest.raises(ValueError, match="is not a medpipe ONNX model: metadata lacks"):
        score_folder(foreign, folder, tmp_path / "a.csv", trained_run.cfg)
    old = export_module(model, tmp_path / "old.onnx", 32,
                        model_metadata(model, {**meta, "preprocess_version": "0"}, "v0", None))
    with pytest.raises(ScoreError, match="trained on pixels whose preprocessing '0' is not one this medpipe produces"):
        score_folder(old, folder, tmp_path / "b.csv", trained_run.cfg)
    assert not list(tmp_path.glob("*.csv"))


def test_store_model_is_verified_and_a_tampered_one_refused(trained_run, model_dir, tmp_path):  # noqa: F811
    store = LocalStore(tmp_path / "store")
    publish_version(store, model_dir, "custom_cnn", "v1", promote=True)  # no gate.json in model_dir
    folder = _images_folder(trained_run, tmp_path / "in")
    # FP32 asked for: on CPU auto would score the INT8 copy (tests/test_int8.py checks that one the same way).
    fp32 = shipping_config(trained_run.work, "score.precision=fp32")
    summary = score_folder("champion", folder, tmp_path / "ok.csv", fp32, store=store)
    assert summary["model_version"] == "v1" and summary["scored"] == len(list(folder.rglob("*.png")))
    assert summary["model_sha256"] == store.sha256("models/custom_cnn/v1/model.onnx")

    stored = store.root / "models" / "custom_cnn" / "v1" / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the published object
    stored.write_bytes(bytes(data))
    for ref in ("champion", "v1", "custom_cnn/v1"):
        with pytest.raises(IntegrityError, match="does not match the recorded sha256"):
            score_folder(ref, folder, tmp_path / f"bad-{ref.replace('/', '-')}.csv", fp32, store=store)
    assert not list(tmp_path.glob("bad-*"))


def test_provider_choice():
    assert choose_providers("cpu") == [CPU_PROVIDER]
    if torch.cuda.is_available():
        assert choose_providers("auto")[0] in (CUDA_PROVIDER, CPU_PROVIDER)
    else:
        # onnxruntime-gpu lists CUDA here anyway; we must not ask for it without a GPU.
        assert choose_providers("auto") == [CPU_PROVIDER]
        with pytest.raises(RuntimeError, match="score.provider=cuda but torch sees no CUDA GPU"):
            choose_providers("cuda")
    with pytest.raises(ValueError, match="Invalid provider 'tpu'"):
        choose_providers("tpu")


def test_risks_at_a_deployment_prevalence(trained_run, model_dir, legacy_model, tmp_path):  # noqa: F811
    """score.prevalence: risks for a population with another class balance (e.g. screening) than training's."""
    meta = torch.load(trained_run.checkpoints["custom_cnn"], weights_only=False)["meta"]
    screening = [0.95, 0.04, 0.01]
    cfg = shipping_config(trained_run.work, f"score.prevalence={screening}")
    folder = trained_run.data_root / "val"
    summary = score_folder(model_dir / "model.onnx", folder, tmp_path / "screening.csv", cfg)
    expected = np.array(screening) / np.array(meta["output_prior"])
    np.testing.assert_allclose(summary["prior_correction"], expected / expected.sum())
    assert summary["risk_prevalence"] == pytest.approx(screening)
    rows = _read(tmp_path / "screening.csv")
    _check_rows(rows, summary["prior_correction"])
    assert np.mean([float(r["risk_normal"]) for r in rows]) > np.mean([float(r["prob_normal"]) for r in rows])
    # Without it: the training prevalence, as recorded.
    assert score_folder(model_dir / "model.onnx", folder, tmp_path / "train.csv", trained_run.cfg)[
        "risk_prevalence"] == "training"
    with pytest.raises(ScoreError, match=r"score.prevalence has 2 values; model .* has 3 classes"):
        score_folder(model_dir / "model.onnx", folder, tmp_path / "bad.csv",
                     shipping_config(trained_run.work, "score.prevalence=[0.5, 0.5]"))
    with pytest.raises(ScoreError, match="records no prior correction"):
        score_folder(legacy_model, folder, tmp_path / "legacy.csv", cfg)
    assert not (tmp_path / "bad.csv").exists() and not (tmp_path / "legacy.csv").exists()
    with pytest.raises(ConfigError, match="score.prevalence must be non-negative"):
        shipping_config(trained_run.work, "score.prevalence=[0.5, -0.1, 0.6]")


def test_dicom_copies_score_like_their_png_originals(trained_run, model_dir, tmp_path):  # noqa: F811
    """A folder as a PACS export gives it: DICOM files with and without extension, scored through the same
    preprocessing; an 8-bit DICOM holding a PNG's pixels must get that PNG's probabilities."""
    from PIL import Image
    from test_dicom import write_dicom

    originals = sorted((trained_run.data_root / "val").rglob("*.png"))[:4]
    folder = tmp_path / "pacs"
    for index, png in enumerate(originals):
        pixels = np.asarray(Image.open(png).convert("L"))
        write_dicom(folder / (f"IM{index:04d}" if index % 2 else f"IM{index:04d}.dcm"), pixels)
        shutil.copyfile(png, folder / f"ref{index}.png")
    (folder / "IM_broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    out = tmp_path / "pacs.csv"
    summary = score_folder(model_dir / "model.onnx", folder, out, trained_run.cfg)
    rows = {r["path"]: r for r in _read(out)}
    assert summary["scored"] == 8 and summary["errors"] == 1
    for index in range(len(originals)):
        dicom = rows[f"IM{index:04d}" if index % 2 else f"IM{index:04d}.dcm"]
        assert [dicom[c] for c in _PROBS] == [rows[f"ref{index}.png"][c] for c in _PROBS]
    errors = {e["path"]: e["reason"] for e in _read(errors_path_for(out))}
    assert "DICOM object without an image" in errors["IM_broken.dcm"]  # a marker and nothing else
