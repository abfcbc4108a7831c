"""Shipping sub-commands: gate, export, record, score.

Exit codes: 0 success; 1 an error (message on stderr); 2 a bad config; 3 `gate` ran fine and the challenger
did NOT pass (a decision, not a failure: gate.json says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from medpipe.cli import config_from_args
from medpipe.run_folder import INT8_ONNX_NAME, INT8_REPORT_NAME, ONNX_NAME, PARITY_NAME, RunFolder
from medpipe.score import score_folder
from medpipe.store import open_store
from medpipe.stages import export, gate, run_stage

__all__ = ["register", "EXIT_GATED"]

EXIT_GATED = 3


def _open_run(args: argparse.Namespace):
    """The run folder named by --run and its config: the run's own config.yaml (same image size, cache folder,
    classes), with --config replacing it and --set / --store on top."""

    run = RunFolder.open(args.run, data_root=getattr(args, "data", None))
    cfg = config_from_args(args) if args.config is not None else run.config(args.set)
    if getattr(args, "store", None):
        cfg.store = dataclasses.replace(cfg.store, uri=args.store)
    return run, cfg


def _cmd_gate(args: argparse.Namespace) -> int:

    run, cfg = _open_run(args)
    decision = gate(run, cfg, decision_path=args.decision)
    champion = decision["champion"]
    print(f"challenger: {decision['challenger']} ({decision['primary_metric']} "
          f"{decision['challenger_metrics'][decision['primary_metric']]})")
    print("champion: " + ("none (first run)" if champion is None else
                          f"{champion['model_name']}/{champion['version']} re-scored on {champion['provider']}"))
    for check in decision["checks"]:
        print(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['name']}: {check['reason']}")
    print(f"{'PASSED' if decision['passed'] else 'GATED'}: {'; '.join(decision['reasons'])}")
    print(f"decision: {args.decision or run.gate_path}")
    return 0 if decision["passed"] else EXIT_GATED


def _cmd_export(args: argparse.Namespace) -> int:

    run, cfg = _open_run(args)
    release = export(run, cfg, version=args.version, model=args.model, out_dir=args.out)
    out, name, version = Path(release["version_dir"]), release["model_name"], release["version"]
    parity = json.loads((out / PARITY_NAME).read_text())
    print(f"exported {name} version {version} to {out / ONNX_NAME}")
    print(f"parity on {parity['images']} val images: max |Δ| {parity['max_abs_diff']:.2g} "
          f"(allowed {parity['atol']:.2g}), argmax mismatches {parity['argmax_mismatches']}")
    int8 = parity.get("int8") or {}
    print(f"INT8 ({INT8_ONNX_NAME}): " + ("shipped" if int8.get("shipped") else "not shipped") +
          f" - {int8.get('reason')}" + (f" (figures: {out / INT8_REPORT_NAME})" if (out / INT8_REPORT_NAME).is_file()
                                        else ""))
    print(f"publish with: medpipe publish --version-dir {out} --model-name {name} --version {version}")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:

    run, cfg = _open_run(args)
    key = run_stage("record", run, cfg)
    print(f"run record: {open_store(cfg.store).uri(key)} (copy: {run.run_record_copy_path})")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:

    cfg = config_from_args(args)
    if args.store:
        cfg.store = dataclasses.replace(cfg.store, uri=args.store)
    if args.precision:
        cfg.score = dataclasses.replace(cfg.score, precision=args.precision)
    summary = score_folder(args.model, args.input, args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    rate = summary["images_per_s"]
    print(f"model {summary['model_name']} version {summary['model_version']} on {summary['provider']}, "
          f"{summary['precision'].upper()} {summary['model_file']} ({summary['precision_reason']})")
    print(f"scored {summary['scored']} images, kept {summary['kept']} from the existing output, "
          f"{summary['errors']} errors, {summary['seconds']:.1f} s" + (f" ({rate} img/s)" if rate else ""))
    print(f"predictions: {summary['output']}  errors: {summary['errors_file']}")
    if not summary["verified"]:  # the rows say so too (model_verified=false); the operator should see it now
        print(f"WARNING: {summary['verification']}", file=sys.stderr)
    if summary["prior_correction"] is not None:  # operators should know which columns to read as probabilities
        print("risk_<class> columns: probabilities corrected to the training prevalence (read these as risks; "
              "predicted is the arg-max of prob_<class>)")
    return 0


def register(subparsers: Any, add_common: Any) -> None:
    """Add gate, export and score to the CLI."""
    p = subparsers.add_parser(
        "gate", help="pick the challenger of a run and decide pass/fail; writes RUN_DIR/gate.json",
        description="Absolute thresholds, the majority baseline and the champion re-scored on the same split. "
                    "The run's decision (RUN/gate.json) is taken once: asked again with the same settings it is "
                    "shown as recorded, with others refused (use --decision). "
                    "Exit 0: passed; 3: gated (gate.json lists the reasons); 1: error.")
    p.add_argument("--run", required=True, help="a `medpipe run` output folder")
    p.add_argument("--data", help="the dataset root of that run (default: the one it recorded); its cache is reused")
    p.add_argument("--store", metavar="URI", help="model store holding the champion (default: store.uri)")
    p.add_argument("--decision", metavar="FILE", help="write a what-if decision here instead of RUN/gate.json, "
                   "which is taken once and never rewritten (the run's export follows it)")
    add_common(p)
    p.set_defaults(func=_cmd_gate)

    p = subparsers.add_parser(
        "export", help="ONNX export + parity check into a folder ready for `medpipe publish`",
        description="Copies metrics.json, model_card.md, plots/, gate.json and config.yaml from the run, then "
                    "writes parity.json, the INT8 copy OUT/model.int8.onnx with int8.json (export.int8; shipped "
                    "only when it agrees with FP32 on val), and OUT/model.onnx (last). Running it again returns "
                    "the export that is there; asking for another model or version there is refused.")
    p.add_argument("--run", required=True, help="a `medpipe run` output folder")
    p.add_argument("--data", help="the dataset root of that run (default: the one it recorded); parity uses its "
                   "val images")
    p.add_argument("--out", help="version folder to write (default: RUN/release); an export there is never "
                   "rewritten")
    p.add_argument("--model", choices=["custom_cnn", "resnet18", "ensemble"],
                   help="default: the challenger in gate.json (ensemble: the run's models as one ONNX graph)")
    p.add_argument("--version", help="version recorded in the model (default: UTC timestamp)")
    add_common(p)
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "record", help="store the run's record (metrics, gate verdict, champion before/after) as runs/<id>/record.json",
        description="The last stage of a run, after gate (and export/publish when it passed); `medpipe run --ship` "
                    "runs it. A record is written once: again with the same content is a no-op, other content is "
                    "refused.")
    p.add_argument("--run", required=True, help="a `medpipe run` output folder whose gate has decided")
    p.add_argument("--store", metavar="URI", help="model store to record the run in (default: store.uri)")
    add_common(p)
    p.set_defaults(func=_cmd_record)

    p = subparsers.add_parser(
        "score", help="score every image under a folder into a CSV with ONNX Runtime",
        description="Unreadable or unsupported files go to <output stem>.errors.csv; they are never fatal.")
    p.add_argument("--model", default="champion", help="champion (default), VERSION, MODEL/VERSION or a .onnx path")
    p.add_argument("--input", required=True, help="folder of images (recursive)")
    p.add_argument("--output", required=True, help="predictions CSV")
    p.add_argument("--store", metavar="URI", help="model store (default: store.uri)")
    p.add_argument("--precision", choices=["auto", "fp32", "int8"],
                   help="model to score with (default: score.precision, auto = FP32 on CUDA, INT8 on CPU when the "
                        "version has one)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep rows of an existing output, score the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_common(p)
    p.set_defaults(func=_cmd_score)
