"""medpipe.fileio: atomic writes leave no temp files, a failed write keeps the old file, sha256 is hashlib's."""

from __future__ import annotations

import csv
import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from medpipe import store
from medpipe.fileio import atomic_output, atomic_write_bytes, atomic_write_text, sha256_file


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes_create_folders_replace_content_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "report.json"
    assert atomic_write_text(target, '{"x": 1}\r\n') == target
    assert target.read_bytes() == b'{"x": 1}\r\n'  # written as given: no newline translation
    assert atomic_write_bytes(target, b"\x00new") == target
    assert target.read_bytes() == b"\x00new"
    assert atomic_write_text(str(tmp_path / "a" / "b" / "card.md"), "ü\n").read_text(encoding="utf-8") == "ü\n"
    assert _names(target.parent) == ["card.md", "report.json"]  # no .report.json.*.tmp left behind


def test_mode_is_applied_whatever_the_temp_file_had(tmp_path: Path) -> None:
    written = atomic_write_text(tmp_path / "default.txt", "x")
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    private = atomic_write_bytes(tmp_path / "private.bin", b"x", mode=0o600)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_atomic_output_serves_file_name_writers(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    with atomic_output(rows) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        assert tmp.parent == tmp_path and tmp.name.startswith(".rows.csv.") and tmp.name.endswith(".tmp")
        csv.writer(handle).writerows([["path", "p"], ["a.png", "0.5"]])
    assert rows.read_text().splitlines() == ["path,p", "a.png,0.5"]
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    with atomic_output(tmp_path / "a.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    assert _names(tmp_path) == ["a.npy", "rows.csv"]


def test_failure_inside_atomic_output_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "metrics.json", "old\n")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_output(target) as tmp:
            seen.append(tmp)
            tmp.write_text("half of the new")
            raise RuntimeError("writer died")
    assert seen and seen[0].parent == tmp_path and not seen[0].exists()
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["metrics.json"]


def test_a_writer_that_writes_elsewhere_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "cache.npy", b"old")
    with pytest.raises(FileNotFoundError, match="nothing was written to the temp file"):
        with atomic_output(target) as tmp:
            pass  # e.g. np.save(tmp, a) writes tmp + ".npy" instead of tmp
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["cache.npy"]


def test_a_failed_replace_removes_the_temp(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    (folder / "inside").mkdir(parents=True)  # a non-empty folder where the file should go: os.replace fails
    with pytest.raises(OSError):
        atomic_write_text(folder, "x")
    assert _names(tmp_path) == ["taken"] and _names(folder) == ["inside"]


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)
    assert store.sha256_file is sha256_file  # the store re-exports the single implementation


def test_sha256_file_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        sha256_file(tmp_path / "nope.bin")
    assert not os.listdir(tmp_path)
