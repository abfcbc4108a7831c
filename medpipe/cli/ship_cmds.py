"""Shipping sub-commands: gate, export, score.

Exit codes: 0 success; 1 an error (message on stderr); 2 a bad config; 3 `gate` ran fine and the challenger
did NOT pass (a decision, not a failure: gate.json says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from medpipe.cli import config_from_args
from medpipe.data.cache import build_cache
from medpipe.export import export_onnx
from medpipe.registry import new_version_name, validate_name
from medpipe.release import stage_release_files
from medpipe.score import score_folder
from medpipe.store import open_store

__all__ = ["register", "EXIT_GATED"]

EXIT_GATED = 3


def _run_config(args: argparse.Namespace):
    """The run's own config.yaml (same image size, cache folder, classes) unless --config names another."""
    run_config = Path(args.run) / "config.yaml"
    if args.config is None and run_config.is_file():
        args.config = str(run_config)
    cfg = config_from_args(args)
    if getattr(args, "store", None):
        cfg.store = dataclasses.replace(cfg.store, uri=args.store)
    return cfg


def _run_data_root(args: argparse.Namespace, run_dir: Path) -> Path:
    """--data, or the dataset root the run recorded in summary.json (the cache is keyed by its content, and the
    gate refuses a dataset whose manifest differs from the run's, so a changed folder cannot slip through)."""
    if args.data:
        return Path(args.data)
    summary_path = run_dir / "summary.json"
    recorded = json.loads(summary_path.read_text()).get("data_root") if summary_path.is_file() else None
    if not recorded:
        raise ValueError(f"{summary_path} does not record the run's dataset (a run folder from an older medpipe, "
                         "or not a `medpipe run` folder); pass --data with the dataset root the run used")
    if not Path(recorded).is_dir():
        raise FileNotFoundError(f"the dataset this run used, {recorded} (from {summary_path}), no longer exists; "
                                "pass --data with its new location")
    return Path(recorded)


def _metrics_paths(run_dir: Path, names: list[str]) -> dict[str, Path]:
    paths = {name: run_dir / "models" / name / "eval" / "metrics.json" for name in names}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a complete `medpipe run` folder: missing {', '.join(missing)}")
    return paths


def _cmd_gate(args: argparse.Namespace) -> int:
    from medpipe.gate import GATE_NAME, gate_models  # scikit-learn stays off the CLI's start-up path

    cfg = _run_config(args)
    run_dir = Path(args.run)
    paths = _metrics_paths(run_dir, list(cfg.models.names))
    cache_dir = build_cache(_run_data_root(args, run_dir), cfg)
    decision = gate_models(paths, cfg, run_dir / GATE_NAME, store=open_store(cfg.store), cache_dir=cache_dir)
    champion = decision["champion"]
    print(f"challenger: {decision['challenger']} ({decision['primary_metric']} "
          f"{decision['challenger_metrics'][decision['primary_metric']]})")
    print("champion: " + ("none (first run)" if champion is None else
                          f"{champion['model_name']}/{champion['version']} re-scored on {champion['provider']}"))
    for check in decision["checks"]:
        print(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['name']}: {check['reason']}")
    print(f"{'PASSED' if decision['passed'] else 'GATED'}: {'; '.join(decision['reasons'])}")
    print(f"decision: {run_dir / GATE_NAME}")
    return 0 if decision["passed"] else EXIT_GATED


def _export_model_name(args: argparse.Namespace, run_dir: Path) -> str:
    if args.model:
        return args.model
    gate_path = run_dir / "gate.json"
    if not gate_path.is_file():
        raise FileNotFoundError(f"{gate_path} does not exist: run `medpipe gate --run {run_dir}` first, "
                                "or name the model with --model")
    decision: dict[str, Any] = json.loads(gate_path.read_text())
    if not decision.get("passed"):
        raise RuntimeError(f"{gate_path}: challenger {decision.get('challenger')} did not pass the gate "
                           f"({'; '.join(decision.get('reasons', []))}); pass --model NAME to export it anyway")
    return str(decision["challenger"])


def _cmd_export(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    run_dir, out = Path(args.run), Path(args.out)
    name = _export_model_name(args, run_dir)
    version = validate_name(args.version or new_version_name(), "version")
    target = out / "model.onnx"
    if target.exists() and not args.overwrite:
        raise RuntimeError(f"{target} already exists; choose another --out or pass --overwrite")
    checkpoint = run_dir / "models" / name / "best.pt"
    cache_dir = build_cache(_run_data_root(args, run_dir), cfg)
    # Side files first and model.onnx last: a folder holding model.onnx is a finished export.
    stage_release_files(run_dir / "models" / name / "eval", out, run_dir / "gate.json", run_dir / "config.yaml")
    export_onnx(checkpoint, cache_dir, cfg, target, out / "metrics.json", version)
    parity = json.loads((out / "parity.json").read_text())
    print(f"exported {name} version {version} to {target}")
    print(f"parity on {parity['images']} val images: max |Δ| {parity['max_abs_diff']:.2g} "
          f"(allowed {parity['atol']:.2g}), argmax mismatches {parity['argmax_mismatches']}")
    print(f"publish with: medpipe publish --version-dir {out} --model-name {name} --version {version}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.store:
        cfg.store = dataclasses.replace(cfg.store, uri=args.store)
    summary = score_folder(args.model, args.input, args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    rate = summary["images_per_s"]
    print(f"model {summary['model_name']} version {summary['model_version']} on {summary['provider']}")
    print(f"scored {summary['scored']} images, kept {summary['kept']} from the existing output, "
          f"{summary['errors']} errors, {summary['seconds']:.1f} s" + (f" ({rate} img/s)" if rate else ""))
    print(f"predictions: {summary['output']}  errors: {summary['errors_file']}")
    if summary["prior_correction"] is not None:  # operators should know which columns to read as probabilities
        print("risk_<class> columns: probabilities corrected to the training prevalence (read these as risks; "
              "predicted is the arg-max of prob_<class>)")
    return 0


def register(subparsers: Any, add_common: Any) -> None:
    """Add gate, export and score to the CLI."""
    p = subparsers.add_parser(
        "gate", help="pick the challenger of a run and decide pass/fail; writes RUN_DIR/gate.json",
        description="Absolute thresholds, the majority baseline and the champion re-scored on the same split. "
                    "Exit 0: passed; 3: gated (gate.json lists the reasons); 1: error.")
    p.add_argument("--run", required=True, help="a `medpipe run` output folder")
    p.add_argument("--data", help="the dataset root of that run (default: the one it recorded); its cache is reused")
    p.add_argument("--store", metavar="URI", help="model store holding the champion (default: store.uri)")
    add_common(p)
    p.set_defaults(func=_cmd_gate)

    p = subparsers.add_parser(
        "export", help="ONNX export + parity check into a folder ready for `medpipe publish`",
        description="Writes OUT/model.onnx, parity.json and copies metrics.json, model_card.md, plots/, gate.json "
                    "and config.yaml from the run.")
    p.add_argument("--run", required=True, help="a `medpipe run` output folder")
    p.add_argument("--data", help="the dataset root of that run (default: the one it recorded); parity uses its "
                   "val images")
    p.add_argument("--out", required=True, help="version folder to write")
    p.add_argument("--model", choices=["custom_cnn", "resnet18"], help="default: the challenger in gate.json")
    p.add_argument("--version", help="version recorded in the model (default: UTC timestamp)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/model.onnx")
    add_common(p)
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "score", help="score every image under a folder into a CSV with ONNX Runtime",
        description="Unreadable or unsupported files go to <output stem>.errors.csv; they are never fatal.")
    p.add_argument("--model", default="champion", help="champion (default), VERSION, MODEL/VERSION or a .onnx path")
    p.add_argument("--input", required=True, help="folder of images (recursive)")
    p.add_argument("--output", required=True, help="predictions CSV")
    p.add_argument("--store", metavar="URI", help="model store (default: store.uri)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep rows of an existing output, score the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_common(p)
    p.set_defaults(func=_cmd_score)
