"""How much does a trained model rely on what lies outside the breast?

Scores one checkpoint twice on the same split: on the images as they are, and with everything outside the largest
bright region blacked out (`data.largest_region_only`: film labels, orientation markers, scanner borders). A model
that reads the breast loses little; one that learned the labels or borders of a scanning programme loses much.
The difference is paired (same images, same patient resamples), so its interval is the one to read.

    .venv/bin/python bench/artifact_probe.py --checkpoint runs/X/models/custom_cnn/best.pt \
        --data ../shared/data/mammo-ddsm --split val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.predict import predict_probs
from medpipe.evaluate.uncertainty import paired_difference_intervals
from medpipe.preprocess import preprocess_options
from medpipe.train import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a best.pt written by medpipe train/run")
    parser.add_argument("--data", required=True, help="dataset root (the split below is scored)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--resamples", type=int, default=1000, help="patient-bootstrap resamples")
    args = parser.parse_args(argv)

    model, meta = load_checkpoint(args.checkpoint)
    trained_masked = preprocess_options(meta.get("preprocess_version"))["largest_region_only"]
    print(f"checkpoint {args.checkpoint}: {meta['model_name']} at {meta['image_size']} px, trained on "
          f"{'masked' if trained_masked else 'plain'} images")
    results = {}
    for masked in (False, True):
        cfg = load_config(None, [f"data.image_size={meta['image_size']}",
                                 f"data.largest_region_only={str(masked).lower()}"])
        data = load_cache(build_cache(Path(args.data), cfg))
        split = data.splits[args.split]
        results[masked] = (split, predict_probs(model, split.images))
    (split, plain), (_, masked) = results[False], results[True]
    labels = np.asarray(split.labels)
    print(f"{args.split}: {len(labels)} images, {len(set(split.patients))} patients")
    print(f"{'images':<28}{'macro AUC':>10}{'bal. acc.':>11}  per-class AUC")
    for name, probs in (("as they are", plain), ("outside the breast blacked", masked)):
        m = compute_metrics(labels, probs, list(meta["classes"]))
        per_class = ", ".join(f"{c} {v['roc_auc']:.3f}" for c, v in m["per_class"].items() if v["roc_auc"] is not None)
        print(f"{name:<28}{m['macro_auc']:>10.3f}{m['balanced_accuracy']:>11.3f}  {per_class}")
    paired = paired_difference_intervals(labels, plain, masked, list(split.patients), resamples=args.resamples)
    for metric in ("macro_auc", "balanced_accuracy"):
        entry = paired.get(metric) or {}
        if entry.get("interval"):
            low, high = entry["interval"]
            print(f"plain minus blacked-out {metric}: {entry['difference']:+.3f} (paired 95 % interval "
                  f"{low:+.3f} to {high:+.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
