"""The `medpipe` command line: every stage runs from here, without Airflow."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from medpipe import __version__
from medpipe.config import ConfigError, load_config
from medpipe.interrupts import Interrupted, on_signals

__all__ = ["main", "build_parser", "add_common", "config_from_args"]

# Sub-command modules; each has register(subparsers, add_common).
_COMMAND_MODULES = ("medpipe.cli.core_cmds", "medpipe.cli.ship_cmds", "medpipe.cli.registry_cmds")


# Credentials the AWS chain reads from the environment. The S3 store keeps botocore's request dumps from being
# logged at all (medpipe.store.s3.quiet_aws_loggers); this filter is the second line: any line that still reaches
# the CLI's handler with one of these values (an exception text, another library) shows it as "***".
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
_MIN_SECRET_LENGTH = 8  # shorter values would blank ordinary words; real AWS keys are 16-40+ characters


class _RedactSecrets(logging.Filter):
    """Replace the environment's credential values in a record's message and exception text by ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = sorted(secrets, key=len, reverse=True)  # a value inside a longer one: the longer first

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            record.msg, record.args = self._redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secrets = [v for v in (os.environ.get(name, "") for name in _SECRET_ENV) if len(v) >= _MIN_SECRET_LENGTH]
    for handler in logging.getLogger().handlers:  # main() may run more than once in a process (tests): replace
        for old in [f for f in handler.filters if isinstance(f, _RedactSecrets)]:
            handler.removeFilter(old)
        if secrets:
            handler.addFilter(_RedactSecrets(secrets))


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
    _setup_logging(getattr(args, "verbose", False))
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
