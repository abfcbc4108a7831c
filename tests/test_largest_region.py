"""data.largest_region_only: film labels and markers blacked out, the same way in the cache and in scoring."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.evaluate.stage import evaluate_model, read_predictions
from medpipe.export import export_onnx
from medpipe.preprocess import largest_region_mask, load_image, preprocess_id, preprocess_options
from medpipe.score import score_folder
from medpipe.train import train_model

_CLASSES = ["normal", "benign", "cancer"]


def mammogram_like(seed: int, label_index: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A dark film with a bright half-disc "breast" on the left (with a faint skin edge and a class-dependent
    spot inside) and a bright "label" rectangle in the top-right corner. Returns (image, breast region)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(6, 2, (size, size))
    yy, xx = np.mgrid[:size, :size]
    breast = (yy - size / 2) ** 2 + xx**2 < (size * 0.55) ** 2
    img[breast] = 150 + rng.normal(0, 10, int(breast.sum()))
    edge = breast & ((yy - size / 2) ** 2 + xx**2 > (size * 0.52) ** 2)
    img[edge] = 40  # the faint skin line must survive the mask
    spot = (yy - size * (0.3 + 0.2 * label_index)) ** 2 + (xx - size * 0.25) ** 2 < (size * 0.06) ** 2
    img[spot] = 240
    img[4:16, size - 30:size - 6] = 230  # the film label
    return np.clip(img, 0, 255).astype(np.uint8), breast


def test_mask_keeps_the_breast_with_its_skin_line_and_drops_the_label() -> None:
    img, breast = mammogram_like(0)
    mask = largest_region_mask(img)
    assert mask[breast].all(), "part of the breast (or its faint edge) was cut"
    assert not mask[4:16, 96 - 30:96 - 6].any(), "the label survived"
    assert mask.sum() < breast.sum() * 1.15  # grown by a couple of pixels, not more
    assert largest_region_mask(np.zeros((20, 20), np.uint8)).all()  # nothing bright: keep everything


def test_mask_drops_a_label_and_a_film_border_joined_to_the_breast_by_thin_strips() -> None:
    """As on many DDSM films: a bright frame along the film's edge touches the breast, and the label sits on a
    thin bright strip reaching it. One connected region; the mask must still keep only the breast."""
    img, breast = mammogram_like(1)
    img[:, -3:] = 220  # film border along the right edge (3 px of 96)
    img[10:13, 50:70] = 220  # a strip from the breast to the label
    img[8:20, 70:90] = 230  # the label, now joined to the border and the breast
    mask = largest_region_mask(img)
    assert mask[breast].all(), "part of the breast (or its faint edge) was cut"
    assert not mask[8:20, 72:90].any(), "the label survived"
    assert not mask[30:90, -3:].any(), "the film border survived"


def test_mask_of_a_large_image_is_made_on_a_scaled_copy() -> None:
    img, breast = mammogram_like(2, size=96)
    big = np.asarray(Image.fromarray(img).resize((2400, 2400), Image.Resampling.NEAREST))
    mask = largest_region_mask(big)
    assert mask.shape == big.shape
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((96, 96), Image.Resampling.BOX)) > 127
    assert small[breast].mean() > 0.99 and not small[4:16, 96 - 30:96 - 6].any()


def test_preprocessing_identity_round_trips_and_refuses_the_unknown() -> None:
    assert preprocess_id() == "1" and preprocess_id(True) == "1+largest_region2"
    assert preprocess_options("1+largest_region2") == {"largest_region_only": True}
    assert preprocess_options(None) == preprocess_options("1") == {"largest_region_only": False}
    with pytest.raises(ValueError, match="'largest_region' is the first largest-region mask.*retrain"):
        preprocess_options("1+largest_region")  # models made before the mask cut thin strips
    for bad in ("2", "1+sharpen"):
        with pytest.raises(ValueError, match=f"preprocessing '{re.escape(bad)}' is not one this medpipe produces"):
            preprocess_options(bad)


def test_the_option_reaches_cache_checkpoint_onnx_and_scoring(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split, count in (("train", 8), ("val", 4)):
        for label_index, label in enumerate(_CLASSES):
            (root / split / label).mkdir(parents=True)
            for n in range(count):
                patient = f"P_{label_index}{n}{split[0]}"
                img, _ = mammogram_like(label_index * 100 + n + (split == "val") * 1000, label_index, size=64)
                Image.fromarray(img).save(root / split / label / f"{patient}_LEFT_CC.png")
    common = ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.batch_size=8",
              "train.device=cpu", "evaluate.splits=[val]", "evaluate.explain_per_class=0"]
    masked_cfg = load_config(None, common + ["data.largest_region_only=true"])
    plain_cache, masked_cache = build_cache(root, load_config(None, common)), build_cache(root, masked_cfg)
    assert plain_cache != masked_cache  # other pixels, other cache
    masked = load_cache(masked_cache)
    assert masked.preprocessing == "1+largest_region2" and load_cache(plain_cache).preprocessing == "1"
    val = masked.splits["val"]
    assert np.array_equal(val.images[0], load_image(root / val.rels[0], 32, largest_region_only=True))
    assert masked.splits["val"].images[:, :4, -8:].max() == 0  # the label corner is black in every image

    run = train_model(masked_cache, "custom_cnn", masked_cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="trained on pixels of preprocessing '1\\+largest_region2'.*"
                                         "data.largest_region_only=true"):
        evaluate_model(run / "best.pt", plain_cache, masked_cfg, tmp_path / "wrong")
    metrics = evaluate_model(run / "best.pt", masked_cache, masked_cfg, tmp_path / "eval")
    check = json.loads(metrics.read_text())["splits"]["val"]["outside_region"]  # black outside already
    assert abs(check["difference"]["macro_auc"]["difference"]) < 0.05
    onnx_path = export_onnx(run / "best.pt", masked_cache, masked_cfg, tmp_path / "v1" / "model.onnx",
                            metrics, "v1")
    # Scoring the raw files re-creates the masked pixels from the model's metadata: same numbers as evaluation.
    folder = tmp_path / "incoming"
    shutil.copytree(root / "val", folder)
    out = tmp_path / "scores.csv"
    score_folder(onnx_path, folder, out, load_config(None, ["score.provider=cpu"]))
    evaluated = read_predictions(metrics, "val", _CLASSES)
    import csv

    with out.open() as handle:
        for row in csv.DictReader(handle):
            expected = evaluated[f"val/{row['path']}"][1]
            assert [float(row[f"prob_{c}"]) for c in _CLASSES] == pytest.approx(expected, abs=1e-4)


def _probe():
    import importlib.util

    from medpipe_testdata import REPO_ROOT

    spec = importlib.util.spec_from_file_location("artifact_probe", REPO_ROOT / "bench" / "artifact_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_artifact_probe_exposes_a_model_that_reads_the_film_label(tmp_path: Path, capsys) -> None:
    """The class is written only in the label's brightness (the breast is the same for every class): a model
    learns the label, and with the label blacked out it is at chance. bench/artifact_probe.py must show it."""
    import re as regex

    root = tmp_path / "data"
    for split, count in (("train", 10), ("val", 6)):
        for label_index, label in enumerate(_CLASSES):
            (root / split / label).mkdir(parents=True)
            for n in range(count):
                img, _ = mammogram_like(label_index * 100 + n + (split == "val") * 1000, 0, size=64)
                img[4:16, 64 - 30:64 - 6] = 80 + 80 * label_index  # the shortcut
                Image.fromarray(img).save(root / split / label / f"P_{label_index}{n}{split[0]}_LEFT_CC.png")
    cfg = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=25",
                             "train.lr=0.003", "train.monitor=loss", "train.batch_size=10", "train.device=cpu",
                             "augment.enabled=false", "models.custom_cnn.channels=[8,16,32,32]"])
    cache = build_cache(root, cfg)
    run = train_model(cache, "custom_cnn", cfg, tmp_path / "run")
    # Every evaluation runs the same check on its cached images and says it in the model card.
    metrics = json.loads(evaluate_model(run / "best.pt", cache, cfg, tmp_path / "eval").read_text())
    check = metrics["splits"]["val"]["outside_region"]
    assert metrics["splits"]["val"]["macro_auc"] >= 0.9 and check["macro_auc"] <= 0.7
    low, high = check["difference"]["macro_auc"]["interval"]
    assert low > 0 and 0.3 < check["area_outside"] < 0.9
    assert "Outside the anatomy: with everything outside" in (tmp_path / "eval" / "model_card.md").read_text()
    assert _probe().main(["--checkpoint", str(run / "best.pt"), "--data", str(root), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    plain = float(regex.search(r"as they are\s+([0-9.]+)", out).group(1))
    blacked = float(regex.search(r"outside the breast blacked\s+([0-9.]+)", out).group(1))
    assert plain >= 0.9 and blacked <= plain - 0.25, out
    assert "plain minus blacked-out macro_auc: +" in out
