"""Shortcut probe: how well do global acquisition statistics — blind to lesions — predict a dataset's labels?

When the classes come from different scanners or programmes (mammo-ddsm: normals from DDSM normal cases,
lesions from CBIS-DDSM), a model can score well by recognising the source instead of the disease, and then fails
on data from elsewhere. This fits a logistic regression (scikit-learn, class-balanced) on a few image statistics
that describe the acquisition rather than the tissue — background noise and its histogram, high-frequency
energy, saturation, the share of the frame the breast fills — on train, and prints the one-vs-rest ROC AUC on
val. Every image goes through medpipe's own preprocessing (`load_image`) at --size.

Read the result as a floor that the CNNs must beat for their score to mean anything about disease: a macro AUC
near a model's own says the model may be reading the scanner. It is not a model to deploy.

Usage:
  python bench/acquisition_probe.py --data ../shared/data/mammo-ddsm [--size 224] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medpipe.config import load_config  # noqa: E402
from medpipe.data.layout import discover  # noqa: E402
from medpipe.preprocess import ImageError, load_image  # noqa: E402

FEATURES = (["breast_fraction", "breast_mean", "breast_std", "black_fraction", "saturated_fraction",
             "tissue_hf_mean", "tissue_hf_std", "tissue_hf_p90", "tissue_hf_p99",
             "background_hf_mean", "background_hf_std", "background_hf_p99"]
            + [f"background_hist_{i}" for i in range(8)])
_TISSUE = 20  # pixel value above which a pixel counts as breast (the background of these films is ~0-15)


def acquisition_features(image: np.ndarray) -> list[float]:
    """Statistics of one uint8 image that describe how it was acquired, not what it shows."""
    x = image.astype(np.float32)
    breast = x > _TISSUE
    high_pass = x - ndimage.gaussian_filter(x, 1.0)  # film grain / detector noise / JPEG texture

    def region(mask: np.ndarray) -> np.ndarray:
        return high_pass[mask] if mask.sum() > 100 else high_pass.ravel()

    tissue, background = region(breast), region(~breast)
    feats = [breast.mean(), x[breast].mean() if breast.any() else 0.0, x[breast].std() if breast.any() else 0.0,
             (x < 5).mean(), (x > 250).mean(),
             np.abs(tissue).mean(), tissue.std(), np.percentile(np.abs(tissue), 90), np.percentile(np.abs(tissue), 99),
             np.abs(background).mean(), background.std(), np.percentile(np.abs(background), 99)]
    hist = np.histogram(x[~breast], bins=8, range=(0, _TISSUE))[0] / max(1, int((~breast).sum()))
    return [float(v) for v in feats] + hist.tolist()


def _split_features(samples, size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    def one(sample):
        try:
            return acquisition_features(load_image(sample.path, size)), sample.label_index
        except ImageError as exc:
            print(f"skipped {sample.rel}: {exc}", file=sys.stderr)
            return None

    with ThreadPoolExecutor(workers) as pool:
        rows = [r for r in pool.map(one, samples) if r is not None]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset root with train/ and val/")
    parser.add_argument("--size", type=int, default=224, help="image size for load_image (default 224)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    args = parser.parse_args(argv)
    cfg = load_config(None, [f"data.image_size={args.size}"])
    layout = discover(args.data, cfg.data.classes, cfg.data.label_aliases, cfg.data.patient_id_pattern)
    started = time.perf_counter()
    x_train, y_train = _split_features(layout.by_split("train"), args.size, args.workers)
    x_val, y_val = _split_features(layout.by_split("val"), args.size, args.workers)
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=5000, class_weight="balanced").fit(scaler.transform(x_train), y_train)
    probs = clf.predict_proba(scaler.transform(x_val))
    classes = cfg.data.classes
    per_class = {c: roc_auc_score(y_val == k, probs[:, k]) for k, c in enumerate(classes) if 0 < (y_val == k).sum()}
    print(f"acquisition-statistics probe ({len(FEATURES)} features, logistic regression) on {args.data}, "
          f"{args.size} px: train {len(y_train)} / val {len(y_val)} images, {time.perf_counter() - started:.1f} s")
    print(f"val macro ROC AUC (one-vs-rest) {np.mean(list(per_class.values())):.3f}; per class "
          + ", ".join(f"{c} {v:.3f}" for c, v in per_class.items()))
    abnormal = y_val != classes.index("normal") if "normal" in classes else None
    if abnormal is not None and 0 < abnormal.sum() < len(abnormal):
        print(f"val normal-vs-abnormal ROC AUC {roc_auc_score(abnormal, 1 - probs[:, classes.index('normal')]):.3f}")
    weights = np.abs(clf.coef_).sum(axis=0)
    top = np.argsort(weights)[::-1][:5]
    print("strongest features: " + ", ".join(FEATURES[i] for i in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
