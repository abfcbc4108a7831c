"""Run medpipe with only the core's declared dependencies importable, as after `pip install medpipe` (no extras).

    python tests/core_only.py SPEC_JSON

SPEC_JSON: {"pyproject": path, "must_hide": [module, ...], "steps": [[medpipe argv], ...]}. The core's
dependencies are [project] dependencies in pyproject.toml, closed over the installed distributions' own
requirements (markers evaluated; a distribution's extras followed only where a requirement names them). Every
top-level module whose distributions all lie outside that closure is hidden: importing it fails exactly as if it
were not installed (find_spec finds nothing, importlib.metadata does not list its distribution). The standard
library and medpipe itself are always importable. Each step then runs through medpipe.cli.main; the first
non-zero exit code ends the run. The last stdout line is a JSON report: `REPORT {...}`.
Used by tests/test_core_install.py; a plain module so the test can also import its functions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

_SELF = "medpipe"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (`ImageHash`, `imagehash` and `image_hash` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_dependencies(pyproject: Path) -> list[str]:
    """The [project] dependencies of `pyproject` (requirement strings, extras not included)."""
    with open(pyproject, "rb") as handle:
        return list(tomllib.load(handle)["project"].get("dependencies", []))


def dependency_closure(requirements: list[str]) -> tuple[set[str], set[str]]:
    """Distributions `requirements` bring in, transitively, in this environment.

    Returns:
        (installed distribution names in the closure, names required here but not installed), normalized.
    """
    from packaging.requirements import Requirement  # imported before any hiding; matplotlib needs it anyway

    todo = [req for req in map(Requirement, requirements) if req.marker is None or req.marker.evaluate()]
    done: set[tuple[str, str]] = set()
    found: set[str] = set()
    missing: set[str] = set()
    while todo:
        req = todo.pop()
        name = normalize(req.name)
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in done:
                continue
            done.add((name, extra))
            try:
                requires = importlib.metadata.requires(req.name) or []
            except importlib.metadata.PackageNotFoundError:
                missing.add(name)
                continue
            found.add(name)
            for line in requires:
                sub = Requirement(line)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    return found, missing


def hidden_modules(allowed: set[str]) -> dict[str, list[str]]:
    """Top-level module -> its distributions, for every installed module that no allowed distribution provides."""
    hidden = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or module == _SELF:
            continue
        if not any(normalize(d) in allowed or normalize(d) == _SELF for d in dists):
            hidden[module] = sorted(set(dists))
    return hidden


class HidingPathFinder:
    """sys.meta_path's PathFinder, blind to the hidden modules and their distributions' metadata.

    It replaces PathFinder (which finds everything in site-packages) rather than refusing from the front of
    sys.meta_path, so a hidden module looks absent and is not an error: `importlib.util.find_spec` returns
    None, and a library's `try: import x except ImportError` takes its usual path.
    """

    def __init__(self, inner, hidden: dict[str, list[str]], allowed: set[str]) -> None:
        self._inner, self._hidden, self._allowed = inner, hidden, allowed
        self.refused: set[str] = set()  # hidden modules something tried to import

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self._hidden:
            self.refused.add(top)
            return None
        return self._inner.find_spec(fullname, path, target)

    def find_distributions(self, *args, **kwargs):
        for dist in self._inner.find_distributions(*args, **kwargs):
            name = normalize(dist.metadata["Name"] or "")
            if name in self._allowed or name == _SELF:
                yield dist

    def invalidate_caches(self) -> None:
        self._inner.invalidate_caches()


def install(pyproject: Path) -> tuple[HidingPathFinder, dict[str, list[str]], set[str]]:
    """Hide everything outside the core's dependency closure. Returns (finder, hidden modules, missing dists)."""
    from importlib.machinery import PathFinder

    allowed, missing = dependency_closure(declared_dependencies(pyproject))
    hidden = hidden_modules(allowed)
    already = sorted(m for m in hidden if m in sys.modules)
    if already:  # imported at start-up (a .pth file): hiding them now would prove nothing
        raise SystemExit(f"core_only: already imported before hiding: {already}")
    finder = HidingPathFinder(PathFinder, hidden, allowed)
    # Only PathFinder is replaced: the others here are builtins, frozen modules, setuptools' distutils shim and
    # the editable finder of medpipe itself.
    sys.meta_path[:] = [finder if f is PathFinder else f for f in sys.meta_path]
    importlib.invalidate_caches()
    return finder, hidden, missing


def run_steps(steps: list[list[str]], hidden: dict[str, list[str]]) -> int:
    """Each step through medpipe.cli.main; the first non-zero exit code, else 0."""
    for argv in steps:
        print("core_only: medpipe", " ".join(argv), flush=True)
        try:
            from medpipe.cli import main

            code = main(argv)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").partition(".")[0]
            if top in hidden:
                print(f"core_only: `medpipe {argv[0]}` imported {top!r} (distribution {', '.join(hidden[top])}), "
                      "which is not a dependency of the core: declare it in pyproject.toml [project] "
                      "dependencies, or import it where it is needed through medpipe.extras.import_extra",
                      file=sys.stderr, flush=True)
            raise
        if code:
            print(f"core_only: `medpipe {argv[0]}` exited with {code}", file=sys.stderr)
            return code
    return 0


def main() -> int:
    spec = json.loads(sys.argv[1])
    finder, hidden, missing = install(Path(spec["pyproject"]))
    visible = [m for m in spec.get("must_hide", []) if importlib.util.find_spec(m) is not None]
    if visible:
        raise SystemExit(f"core_only: {visible} should be hidden but can be imported")
    code = run_steps(spec["steps"], hidden)
    report = {"hidden": len(hidden), "missing": sorted(missing), "refused": sorted(finder.refused)}
    print("REPORT", json.dumps(report), flush=True)
    return code


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # tests/ holds packages (data, store, evaluate) that must not shadow anything
    sys.exit(main())
