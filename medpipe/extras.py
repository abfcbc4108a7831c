"""Optional dependencies: the extras of pyproject.toml ([project.optional-dependencies]), imported where used.

A core install (``pip install medpipe``) has no boto3 or pydicom; the first S3 store or DICOM file then fails
with a message naming the extra to install instead of a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "import_extra"]


class MissingExtraError(ImportError, RuntimeError):
    """An optional dependency is not installed (a RuntimeError too, so the CLI prints it as one line)."""


def import_extra(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import `module`, which medpipe's extra `extra` installs.

    Args:
        module: e.g. "boto3".
        extra: the extra that brings it, e.g. "s3".
        needed_for: what needs it, for the message, e.g. "store.uri 's3://bucket/prefix'".

    Returns:
        The module.

    Raises:
        MissingExtraError: `module` is not installed; the message says `pip install 'medpipe[<extra>]'`.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the module is there but one of its own dependencies is not: that is not a missing extra
        raise MissingExtraError(f"{needed_for} needs {exc.name}, which is not installed: "
                                f"pip install 'medpipe[{extra}]'", name=exc.name) from exc
