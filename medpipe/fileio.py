"""Atomic file writes and file hashing: the one implementation every medpipe stage uses.

A write goes to a hidden temp file in the target's folder (``.<name>.<random>.tmp``: same filesystem, so the final
``os.replace`` is atomic; hidden, so folder listings and the local store never mistake it for an output) and is
moved over the target only after the writer finished and the bytes were flushed to disk. Readers therefore see
the old file or the new one, never half of one, and a failed write leaves the old file untouched and no temp
file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "atomic_write_bytes", "atomic_write_text", "sha256_file"]

_logger = logging.getLogger(__name__)


def _temp_path(path: Path) -> Path:
    # Not mkstemp: the temp must NOT exist before the writer runs, so a writer that silently wrote somewhere
    # else (np.save appends ".npy" to a name without it) is caught instead of an empty file replacing the target.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_file(path: Path) -> None:
    # Flush the bytes before the rename: after a power loss the target holds the old or the new content, not zeros.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a writer that wants a file name; move it over ``path`` on success.

    For writers such as ``torch.save``, ``fig.savefig(tmp, format="png")``, ``onnx.save``, ``shutil.copyfile``
    or ``open(tmp, "w")`` + a csv writer. The temp name ends in ``.tmp``: pass the format explicitly where a
    writer guesses it from the suffix (``savefig``), and an open file to ``np.save`` (which would append ``.npy``).

    Args:
        path: the final file; its folder is created when missing.
        mode: permission bits of the final file.

    Yields:
        The temp path (it does not exist yet; the writer creates it).

    Raises:
        FileNotFoundError: the block finished without creating the temp file (``path`` is left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temp file {tmp} for {path}; the writer must "
                                    "create exactly that file (np.save appends '.npy': pass it an open file)")
        os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _logger.debug("wrote %s", path)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring).

    Args:
        path: the final file; its folder is created when missing.
        data: the complete content.
        mode: permission bits of the final file.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    with atomic_output(path, mode) as tmp, open(tmp, "xb") as handle:
        handle.write(data)
    return path


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8; newlines are written as given (no translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (any size, constant memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
