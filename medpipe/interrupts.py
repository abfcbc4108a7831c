"""Ctrl-C and SIGTERM (what Airflow sends a task it kills) end a command with one line, not a traceback.

`on_signals()` turns both signals into `Interrupted`, a BaseException (like KeyboardInterrupt) so that no
`except Exception` on the way swallows it. Code that knows how to continue (training: from last.pt) adds that to
the exception on its way up; the CLI prints it and exits 128 + the signal number (130, 143), as shells do. Every
file medpipe writes goes through medpipe.fileio's temp-then-rename, so an interrupt leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "on_signals"]


class Interrupted(BaseException):
    """The process was asked to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where: str | None = None  # e.g. "training custom_cnn at epoch 8"
        self.hint: str | None = None  # e.g. "`--resume` continues from runs/x/models/custom_cnn/last.pt"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        text = f"interrupted ({signal.Signals(self.signum).name})"
        if self.where:
            text += f" {self.where}"
        return text + (f"; {self.hint}" if self.hint else "")


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
