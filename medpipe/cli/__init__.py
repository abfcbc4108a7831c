"""The `medpipe` command line: every stage runs from here, without Airflow."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medpipe import __version__
from medpipe.config import ConfigError, load_config
from medpipe.interrupts import Interrupted, on_signals

__all__ = ["main", "build_parser", "add_common", "config_from_args"]

# Sub-command modules; each has register(subparsers, add_common).
_COMMAND_MODULES = ("medpipe.cli.core_cmds", "medpipe.cli.ship_cmds", "medpipe.cli.registry_cmds")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config; defaults to the packaged default.yaml")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config value (repeatable), e.g. --set train.epochs=5")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace):
    return load_config(args.config, args.set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"medpipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers, add_common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with on_signals():
            return int(args.func(args) or 0)
    except Interrupted as exc:  # Ctrl-C, or SIGTERM from Airflow or a scheduler: one line, no traceback
        print(f"medpipe: {exc.message()}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"medpipe: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, PermissionError) as exc:
        # Expected failures (bad input, refused gates, integrity errors) end with their message, not a traceback.
        logging.getLogger("medpipe").debug("failure", exc_info=True)
        print(f"medpipe: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
