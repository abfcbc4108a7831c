"""What every contract shares: a `schema_version`, one writer, one reader, and refusals that name the file and the
command that writes it again.

Version rule: a file without `schema_version` was written before contracts existed and reads as version 0 (its keys
are the version-1 keys); a version newer than the contract's `SCHEMA_VERSION` is refused, since this medpipe cannot
know what it changed. Keys this medpipe does not know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from medpipe.fileio import atomic_write_text

__all__ = ["Contract", "ContractError"]

_C = TypeVar("_C", bound="Contract")
_NOT_WRITTEN = ("extra", "source")


class ContractError(ValueError):
    """A file one stage hands another cannot be read: not JSON, a newer schema, or required keys missing or of the
    wrong type. The message names the file and how to write it again."""


def _has_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    # bool is an int to isinstance; a `true` where a number belongs is a broken file, not a 1.
    return isinstance(value, expected) and not (isinstance(value, bool) and bool not in (
        expected if isinstance(expected, tuple) else (expected,)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contract:
    """Base of the contracts; subclasses set KIND, SCHEMA_VERSION, REQUIRED and `_regenerate`, and redeclare
    `schema_version` with their SCHEMA_VERSION as its default (what a newly built contract writes)."""

    KIND: ClassVar[str] = "contract"  # the file's name in messages: "metrics.json", "gate.json", "checkpoint meta"
    SCHEMA_VERSION: ClassVar[int] = 1  # the newest version this medpipe reads, and the one it writes
    REQUIRED: ClassVar[dict[str, type | tuple[type, ...]]] = {}  # key -> JSON type, present since version 0
    # Optional keys added to a version after files of it were written: left out while None, so an older file is
    # written back as it was read (its absence reads as None again).
    ADDED_LATER: ClassVar[frozenset[str]] = frozenset()

    schema_version: int = 1
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)  # keys this medpipe does not know
    source: str | Path | None = dataclasses.field(default=None, compare=False, repr=False)  # Path: a local file

    @classmethod
    def _regenerate(cls, raw: dict[str, Any], source: str | Path | None) -> str:
        """How to write the file again, e.g. "run `medpipe gate --run RUN` again"."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written: schema_version first, the contract's keys, then the unknown keys read."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_WRITTEN
                and not (f.name in self.ADDED_LATER and getattr(self, f.name) is None)}
        return {**data, **{k: v for k, v in self.extra.items() if k not in data}}

    def write(self, path: str | Path) -> Path:
        """Write the contract as JSON (atomically; NaN refused: an undefined number is null)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def read(cls: type[_C], path: str | Path) -> _C:
        """Read the contract from a local JSON file; FileNotFoundError (saying how to write it) when there is none,
        ContractError as `parse`."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist; {cls._regenerate({}, path)}") from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls: type[_C], raw: dict[str, Any] | bytes | str, source: str | Path) -> _C:
        """Read the contract from its JSON object, or from the bytes or text of one.

        Args:
            raw: the parsed object, or JSON bytes/text (e.g. an object from the model store).
            source: what `raw` came from, named in errors: a local file as a Path, a store key or URI as a str.

        Raises:
            ContractError: not a JSON object, schema_version newer than SCHEMA_VERSION (or not an integer), a
                required key missing or of the wrong type.
        """
        if isinstance(raw, (bytes, str)):
            try:
                raw = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ContractError(f"{source} is not valid JSON ({exc}); {cls._regenerate({}, source)}") from exc
        if not isinstance(raw, dict):
            raise ContractError(f"{source} holds a {type(raw).__name__}, expected a JSON object ({cls.KIND}); "
                                f"{cls._regenerate({}, source)}")
        hint = cls._regenerate(raw, source)
        version = raw.get("schema_version", 0)
        if not _has_type(version, int) or version < 0:
            raise ContractError(f"{source}: schema_version {version!r} is not a non-negative integer; {hint}")
        if version > cls.SCHEMA_VERSION:
            raise ContractError(f"{source} was written by a newer medpipe ({cls.KIND} schema_version {version}, "
                                f"this medpipe reads up to {cls.SCHEMA_VERSION}): upgrade medpipe, or {hint}")
        missing = [key for key in cls.REQUIRED if key not in raw]
        if missing:
            raise ContractError(f"{source} lacks the required key(s) {', '.join(map(repr, missing))} of a "
                                f"{cls.KIND} (schema_version {version}); {hint}")
        wrong = [f"{key!r} is of type {type(raw[key]).__name__}, expected {_type_name(expected)}"
                 for key, expected in cls.REQUIRED.items() if not _has_type(raw[key], expected)]
        if wrong:
            raise ContractError(f"{source} is not a valid {cls.KIND}: {'; '.join(wrong)}; {hint}")
        known = {f.name for f in dataclasses.fields(cls)} - {"schema_version", *_NOT_WRITTEN}
        return cls(schema_version=version, source=source, **{k: v for k, v in raw.items() if k in known},
                   extra={k: v for k, v in raw.items() if k not in known and k != "schema_version"})


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {"dict": "JSON object", "list": "JSON list", "str": "string", "int": "integer", "float": "number",
             "bool": "true/false"}
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)
