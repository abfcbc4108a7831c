"""Core sub-commands: validate, split, cache, train, evaluate, run, stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medpipe import distributed
from medpipe.cli import config_from_args
from medpipe.contracts import read_gate_decision, read_metrics
from medpipe.data.cache import build_cache
from medpipe.data.validate import format_validation_summary, validate_dataset
from medpipe.run_folder import GATE_NAME, RunFolder, default_run_dir
from medpipe.stages import run_pipeline, run_stage
from medpipe.train import train_model

__all__ = ["register"]


def _cmd_validate(args: argparse.Namespace) -> int:

    cfg = config_from_args(args)
    report = validate_dataset(args.root, cfg, args.out)
    print(format_validation_summary(report))
    print(f"reports: {report.json_path}  {report.md_path}")
    return 0 if report.ok else 1


def _cmd_split(args: argparse.Namespace) -> int:
    from medpipe.data.split import make_dev_split  # scikit-learn stays off the CLI's start-up path

    result = make_dev_split(args.root, args.out, config_from_args(args), fraction=args.fraction, seed=args.seed)
    for split, counts in result.counts.items():
        print(f"{split}: {sum(counts.values())} images, {result.patients[split]} patients "
              f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
    print(f"dataset written to {result.out} (assignment: {result.report_path})")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:

    print(build_cache(args.data, config_from_args(args)))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:

    cfg = config_from_args(args)
    distributed.setup(cfg.train.device)  # under torchrun: join the ranks before rank 0 builds the cache alone
    cache_dir = distributed.on_main(lambda: build_cache(args.data, cfg), f"build the cache of {args.data}")
    names = args.model or cfg.models.names
    for name in names:
        out = train_model(cache_dir, name, cfg, Path(args.out) / name, resume=args.resume)
        if distributed.is_main():
            print(f"{name}: checkpoints and history in {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medpipe.evaluate.stage import evaluate_model  # scikit-learn stays off the CLI's start-up path

    cfg = config_from_args(args)
    cache_dir = build_cache(args.data, cfg)
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.parent / "eval"
    metrics_path = evaluate_model(checkpoint, cache_dir, cfg, out)
    for split, m in read_metrics(metrics_path).splits.items():
        b = m["baseline"]
        print(f"{split}: balanced_accuracy {m['balanced_accuracy']:.3f} (baseline {b['balanced_accuracy']:.3f}), "
              f"macro_auc {m['macro_auc'] if m['macro_auc'] is None else round(m['macro_auc'], 3)}, "
              f"accuracy {m['accuracy']:.3f} (baseline {b['accuracy']:.3f})")
    print(f"metrics: {metrics_path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from medpipe.pipeline import render_summary_markdown  # scikit-learn stays off the CLI's start-up path

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else default_run_dir()
    summary_path = run_pipeline(args.data, cfg, out, resume=args.resume, ship=args.ship)
    if not distributed.is_main():  # under torchrun: rank 0 reports
        return 0
    print(render_summary_markdown(json.loads(Path(summary_path).read_text())))
    print(f"everything is under {out.resolve()} (summary: {summary_path})")
    if not args.ship:
        print(f"next: medpipe gate --run {out}")
        return 0
    from medpipe.cli.ship_cmds import EXIT_GATED  # one exit code for "gated" across the CLI

    decision = read_gate_decision(out / GATE_NAME)
    print(f"gate {'PASSED' if decision.passed else 'GATED'} ({decision.challenger}): {'; '.join(decision.reasons)}")
    return 0 if decision.passed else EXIT_GATED


def _cmd_stage(args: argparse.Namespace) -> int:
    run = RunFolder.open(args.run)
    result = run_stage(args.name, run, run.config(), args.model)
    if distributed.is_main():
        print(result)
    return 0


def register(subparsers, add_common) -> None:
    p = subparsers.add_parser("validate", help="check a dataset folder; writes validation.json/.md",
                              description="Validate ROOT/{train,val,test}/{class}/*; exit 1 on hard errors.")
    p.add_argument("root", help="dataset root")
    p.add_argument("--out", default="validation", help="folder for validation.json and validation.md")
    add_common(p)
    p.set_defaults(func=_cmd_validate)

    p = subparsers.add_parser(
        "split", help="patient-grouped splits: train -> train+val and val -> test, or a flat ROOT/{class}/* in three",
        description="Build OUT/{train,val,test} for honest model selection: the source's train patients are split "
                    "(grouped by patient id, stratified by class) into train and val; the source's val becomes "
                    "test, to be reported once after the choices are made. A source without train/ and val/ "
                    "folders but with class folders (ROOT/{class}/*) is split three ways by patient: --fraction "
                    "of the patients each to val and test, the rest to train. Files are hard-linked or copied; "
                    "files matching data.exclude (segmentation masks) are left out.")
    p.add_argument("root", help="source dataset root")
    p.add_argument("--out", required=True, help="new, empty folder for the split dataset")
    p.add_argument("--fraction", type=float, default=0.2,
                   help="share of train patients moved to val; for a flat source, the share of patients in each "
                        "of val and test (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient assignment (default 0)")
    add_common(p)
    p.set_defaults(func=_cmd_split)

    p = subparsers.add_parser("cache", help="decode a dataset once into the uint8 training cache; prints its folder")
    p.add_argument("--data", required=True, help="dataset root")
    add_common(p)
    p.set_defaults(func=_cmd_cache)

    p = subparsers.add_parser("train", help="train custom_cnn and/or resnet18",
                              description="Train on the train split, select the best epoch on val.")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--out", required=True, help="output folder; each model writes OUT/<model>/")
    p.add_argument("--model", action="append", choices=["custom_cnn", "resnet18"],
                   help="model to train (repeatable); default: models.names from the config")
    p.add_argument("--resume", action="store_true", help="continue from OUT/<model>/last.pt")
    add_common(p)
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("evaluate", help="metrics, plots and model card for a checkpoint")
    p.add_argument("--checkpoint", required=True, help="best.pt written by train")
    p.add_argument("--data", required=True, help="dataset root (its cache is reused)")
    p.add_argument("--out", help="output folder (default: <checkpoint folder>/eval)")
    add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser("run", help="validate -> train both models -> evaluate both -> summary",
                              description="The whole core pipeline on one dataset; everything under --out.")
    p.add_argument("--data", default="sample_data/mammo-ddsm-sample", help="dataset root (default: bundled sample)")
    p.add_argument("--out", help="run folder (default: a new runs/<UTC timestamp>); a folder holding another run "
                   "is refused, nothing in it is rewritten")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same data, settings "
                   "and code): finished stages are kept, training continues from last.pt")
    p.add_argument("--ship", action="store_true", help="go on as the retrain DAG does: gate, export + publish to "
                   "store.uri when the gate passed, and the run record (exit 3 when the gate did not pass)")
    add_common(p)
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser(
        "stage", help="run one stage of an existing run folder (what a DAG task runs; under torchrun for N GPUs)",
        description="Run one medpipe stage (medpipe.stages) on a run folder made by `medpipe run` or the DAG's "
                    "start task, with the config saved there. The retrain DAG launches `torchrun "
                    "--nproc_per_node=N -m medpipe stage train --run DIR --model M` for multi-GPU training.")
    p.add_argument("name", help="stage name, e.g. train")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--model", help="model, for per-model stages (train, evaluate)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")  # the config is the run's own
    p.set_defaults(func=_cmd_stage)
