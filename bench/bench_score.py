"""Scoring throughput: decode ceiling, ONNX Runtime FP32 and INT8 vs torch eager, and end-to-end `score_folder`.

For custom_cnn, resnet18 and their ensemble (random weights: throughput does not depend on them; `--models
custom_cnn resnet18 ensemble`), exported at --size px, or with
--run the models of a finished `medpipe run` (exported by `medpipe.stages.export`: the INT8 copy calibrated on its
training images and checked on its val images, at the run's image size), it prints images/s for:
  decode     - `load_image` over the folder in the scorer's thread pool: the ceiling of any scoring pipeline
  ort        - ONNX Runtime alone on pre-decoded arrays (batches of --batch-size), per session setting tried
  ort int8   - the same with the statically quantized model.int8.onnx (medpipe.quantize)
  torch      - torch eager alone on the same arrays (fp32, inference_mode, the same number of threads)
  e2e        - `medpipe.score.score_folder` on the folder: decode overlapped with inference, CSV written (FP32 and
               INT8, each file scored as named)
Goals (CPU): ort >= 1.3 x torch; e2e >= 80 % of min(decode, ort), the best any overlap of the two can reach
(e2e / decode is printed too: it reaches 80 % only where inference is faster than decoding, i.e. on a GPU);
INT8 e2e >= 2.5 x FP32 e2e. Without --run the INT8 model is calibrated on the benchmark's own images (its
accuracy is not the point there; int8.json of an export is).

Usage:
  python bench/bench_score.py                                   # 2000 jittered 224 px JPEGs from sample_data
  python bench/bench_score.py --source ../shared/data/mammo-ddsm -n 2000
  python bench/bench_score.py --folder DIR --models resnet18 --repeats 5
  python bench/bench_score.py --run RUN --folder ../shared/data/mammo-ddsm/val --models resnet18
Other engineers may share the CPU cores: rerun when figures look noisy (the best of --repeats runs is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch  # before onnxruntime: loads the CUDA libraries onnxruntime-gpu needs on a GPU machine
from PIL import Image

import onnxruntime as ort
from medpipe.config import load_config
from medpipe.export import export_module, model_metadata
from medpipe.models import build_model
from medpipe.onnx_runtime import choose_providers, predict_onnx
from medpipe.preprocess import IMAGE_EXTENSIONS, PREPROCESS_VERSION, decode_image, load_image
from medpipe.quantize import quantize_model
from medpipe.score import score_folder

_REPO = Path(__file__).resolve().parent.parent
_SAMPLE = _REPO / "sample_data" / "mammo-ddsm-sample"
_CLASSES = ["normal", "benign", "cancer"]


def make_folder(dest: Path, n: int, size: int, source: Path, seed: int = 0) -> Path:
    """Write n distinct size x size JPEGs made from the real images under `source` (crop, flip, gain jitter)."""
    sources = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not sources:
        sys.exit(f"no images under {source}")
    dest.mkdir(parents=True, exist_ok=True)

    def _one(i: int) -> None:
        rng = np.random.default_rng(seed * 1_000_003 + i)
        arr = decode_image(sources[i % len(sources)], 64_000_000)
        h, w = arr.shape
        ch, cw = int(h * rng.uniform(0.8, 1.0)), int(w * rng.uniform(0.8, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = arr[y:y + ch, x:x + cw].astype(np.float32) * rng.uniform(0.85, 1.15)
        img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(dest / f"sub{i % 10}" / f"img_{i:06d}.jpg", quality=90)

    for k in range(10):  # a nested layout, as real folders have
        (dest / f"sub{k}").mkdir(exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_one, range(n)))
    return dest


def subset_folder(files: list[Path], root: Path, dest: Path) -> Path:
    """Hard links (regular files, which the scorer accepts) to `files`, keeping their layout under `root`."""
    for path in files:
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another filesystem
            shutil.copyfile(path, target)
    return dest


def _best(fn, repeats: int) -> tuple[float, float]:
    """(best, median) images/s over repeats."""
    rates = [fn() for _ in range(repeats)]
    return max(rates), statistics.median(rates)


def bench_decode(files: list[Path], size: int, workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda p: load_image(p, size), files):
            pass
    return len(files) / (time.perf_counter() - start)


def _session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=choose_providers("auto"))


def bench_ort(session: ort.InferenceSession, images: np.ndarray, batch: int) -> float:
    predict_onnx(session, images[:batch], batch)  # warm-up
    start = time.perf_counter()
    predict_onnx(session, images, batch)
    return len(images) / (time.perf_counter() - start)


def bench_torch(model: torch.nn.Module, images: np.ndarray, batch: int) -> float:
    with torch.inference_mode():
        model(torch.from_numpy(images[:batch, None].astype(np.float32)))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            torch.softmax(model(torch.from_numpy(images[i:i + batch, None].astype(np.float32))), dim=1)
    return len(images) / (time.perf_counter() - start)


def _export(name: str, size: int, work: Path, images: np.ndarray) -> tuple[torch.nn.Module, Path, Path]:
    """A random-weights model exported at `size`, and its INT8 copy calibrated on the first benchmark images."""
    cfg = load_config(None, ["models.resnet18.weights=none"])
    if name == "ensemble":  # both networks and their mean in one graph, as `medpipe export --model ensemble` ships
        from medpipe.ensemble import ensemble_module

        model = ensemble_module([build_model(n, cfg, len(_CLASSES)) for n in ("custom_cnn", "resnet18")])
    else:
        model = build_model(name, cfg, len(_CLASSES)).eval()
    meta = {"model_name": name, "classes": _CLASSES, "image_size": size, "manifest_hash": "bench",
            "preprocess_version": PREPROCESS_VERSION}
    path = export_module(model, work / f"{name}.onnx", size, model_metadata(model, meta, "bench", None))
    int8 = work / f"{name}.int8.onnx"
    quantize_model(path, int8, images[:64])
    return model, path, int8


def _from_run(name: str, run_dir: Path, work: Path) -> tuple[torch.nn.Module, Path, Path | None]:
    """The run's model: its checkpoint for torch, and FP32 + INT8 exported as `medpipe export` does."""
    from medpipe.ensemble import load_model
    from medpipe.run_folder import RunFolder
    from medpipe.stages import export

    run = RunFolder.open(run_dir)
    release = Path(export(run, run.config(["export.int8=true"]), version="bench", model=name,
                          out_dir=work / name)["version_dir"])
    report = json.loads((release / "int8.json").read_text())
    check = report.get("check") or {}
    if not report["shipped"]:  # the check refused it: FP32 figures only, and why
        print(f"{name:10s} int8 not shipped: {report['reason']}")
        model, _ = load_model(run.model_source(name), "cpu")
        return model.eval(), release / "model.onnx", None
    print(f"{name:10s} int8 check   arg-max agreement {check['argmax_agreement']:.4f}, macro AUC fp32 "
          f"{check['macro_auc_fp32']:.4f} int8 {check['macro_auc_int8']:.4f} on {check['images']} val images")
    model, _ = load_model(run.model_source(name), "cpu")
    return model.eval(), release / "model.onnx", release / "model.int8.onnx"


def _bench_model(name: str, args: argparse.Namespace, work: Path, images: np.ndarray, e2e_folder: Path,
                 cfg, decode_rate: float) -> None:
    """Print the figures of one model. ORT (FP32, INT8), torch and e2e (FP32, INT8) run interleaved, one of each per
    round, so that all see the same load on shared cores; the ratios are medians of per-round ratios."""
    if args.run:
        model, path, int8_path = _from_run(name, args.run, work)
    else:
        model, path, int8_path = _export(name, args.size, work, images)
    if args.sweep:
        for level, threads in (("all", args.threads), ("extended", args.threads), ("basic", args.threads),
                               ("all", 1)):
            session = _session(path, level, threads)
            rate = _best(lambda: bench_ort(session, images, args.batch_size), args.repeats)
            print(f"{name:10s} sweep ort[{level},{threads}t] {rate[0]:8.1f} img/s (median {rate[1]:.1f})")
    session = _session(path, "all", args.threads)  # what score_folder runs: level all, --threads
    int8_session = _session(int8_path, "all", args.threads) if int8_path else None
    rounds = []
    for _ in range(args.repeats):
        ort_rate = bench_ort(session, images, args.batch_size)
        int8_rate = bench_ort(int8_session, images, args.batch_size) if int8_session else float("nan")
        eager = bench_torch(model, images, args.batch_size)
        e2e = score_folder(path, e2e_folder, work / "preds.csv", cfg, overwrite=True)
        e2e_int8 = (score_folder(int8_path, e2e_folder, work / "preds.csv", cfg, overwrite=True) if int8_path
                    else {"precision": "int8", "images_per_s": float("nan")})
        assert (e2e["precision"], e2e_int8["precision"]) == ("fp32", "int8")
        rounds.append((ort_rate, eager, e2e["images_per_s"], int8_rate, e2e_int8["images_per_s"], e2e["provider"]))
    ort_r, torch_r, e2e_r, int8_r, e2e8_r = (np.array([r[i] for r in rounds]) for i in range(5))
    speedup = float(np.median(ort_r / torch_r))
    efficiency = float(np.median(e2e_r / np.minimum(decode_rate, ort_r)))
    print(f"{name:10s} ort fp32     {ort_r.max():8.1f} img/s (median {np.median(ort_r):.1f}) on {rounds[0][5]}")
    print(f"{name:10s} ort int8     {int8_r.max():8.1f} img/s (median {np.median(int8_r):.1f})"
          f"  -> int8/fp32 {float(np.median(int8_r / ort_r)):.2f}x")
    print(f"{name:10s} torch eager  {torch_r.max():8.1f} img/s (median {np.median(torch_r):.1f})"
          f"  -> ort/torch {speedup:.2f}x (goal >= 1.3x), int8/torch {float(np.median(int8_r / torch_r)):.2f}x")
    print(f"{name:10s} e2e fp32     {e2e_r.max():8.1f} img/s (median {np.median(e2e_r):.1f})"
          f"  -> {100 * efficiency:.0f}% of min(decode, ort) (goal >= 80%), "
          f"{100 * np.median(e2e_r) / decode_rate:.0f}% of the decode ceiling")
    print(f"{name:10s} e2e int8     {e2e8_r.max():8.1f} img/s (median {np.median(e2e8_r):.1f})"
          f"  -> int8/fp32 end to end {float(np.median(e2e8_r / e2e_r)):.2f}x (goal >= 2.5x), "
          f"{100 * np.median(e2e8_r) / decode_rate:.0f}% of the decode ceiling")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="images to generate (default 2000)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--folder", type=Path, help="use this folder of images instead of generating one")
    p.add_argument("--source", type=Path, default=_SAMPLE, help="real images to jitter (default: bundled sample)")
    p.add_argument("--models", nargs="+", default=["custom_cnn", "resnet18"])
    p.add_argument("--run", type=Path, help="a finished `medpipe run` folder: benchmark its trained models (at its "
                   "image size, which replaces --size) instead of random weights")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode threads")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op = torch threads")
    p.add_argument("--infer-images", type=int, default=512, help="images for the inference-only figures")
    p.add_argument("--e2e-images", type=int, help="score only the first K images end to end (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep", action="store_true", help="also try ORT levels basic/extended and 1 thread")
    return p.parse_args()


def main() -> None:
    args = _parse()
    if args.run:  # the run's models take images of the size they were trained at
        from medpipe.run_folder import RunFolder

        args.size = RunFolder.open(args.run).config().data.image_size
    work = Path(tempfile.mkdtemp(prefix="medpipe-bench-score-"))
    try:
        folder = args.folder or make_folder(work / "images", args.n, args.size, args.source)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        print(f"{len(files)} images in {folder}; cores {os.cpu_count()}, decode workers {args.workers}, "
              f"inference threads {args.threads}, batch {args.batch_size}; ort {ort.__version__}, "
              f"torch {torch.__version__}")
        decode = _best(lambda: bench_decode(files, args.size, args.workers), args.repeats)
        print(f"decode        {decode[0]:8.1f} img/s (median {decode[1]:.1f})")
        images = np.stack([load_image(p, args.size) for p in files[:args.infer_images]])
        e2e_folder = folder
        if args.e2e_images and args.e2e_images < len(files):
            e2e_folder = subset_folder(files[:args.e2e_images], folder, work / "e2e")
        torch.set_num_threads(args.threads)
        cfg = load_config(None, [f"score.batch_size={args.batch_size}", f"score.decode_workers={args.workers}",
                                 f"score.intra_op_threads={args.threads}"])
        for name in args.models:
            _bench_model(name, args, work, images, e2e_folder, cfg, decode[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
