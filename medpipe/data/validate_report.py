"""A validation report: what it holds (`Finding`, `ValidationReport`) and how it is rendered: JSON for machines,
Markdown for people, a few lines for the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.fileio import atomic_write_text

__all__ = ["Finding", "ValidationReport", "write_report", "render_markdown", "format_validation_summary"]

MAX_LISTED = 50  # findings listed per severity in the Markdown; the JSON always holds all of them


@dataclass(frozen=True)
class Finding:
    """One problem found: which check, how severe, which files, and a message naming them and what was expected."""

    check: str  # a key of medpipe.config.VALIDATION_CHECKS
    severity: str  # "error" or "warning" ("ignore"d findings are only counted)
    paths: list[str]  # relative to the data root
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "paths": list(self.paths), "message": self.message}


@dataclass
class ValidationReport:
    """What validate_dataset found and wrote; `to_dict()` is exactly the content of validation.json."""

    ok: bool
    errors: list[Finding]
    warnings: list[Finding]
    json_path: Path
    md_path: Path
    stats: dict[str, Any] = field(default_factory=dict)  # counts, patients, images, duplicates, timing, ...

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.stats, "errors": [f.to_dict() for f in self.errors],
                "warnings": [f.to_dict() for f in self.warnings]}


def write_report(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    """Write the report dict as JSON and as Markdown, each atomically."""
    atomic_write_text(json_path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    atomic_write_text(md_path, render_markdown(report))


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _size(wh: list[int]) -> str:
    return f"{wh[0]}x{wh[1]}"


def _counts_section(r: dict[str, Any]) -> list[str]:
    classes = r["classes"]
    rows = [[s, *[r["counts"][s][c] for c in classes], sum(r["counts"][s].values()), r["imbalance_ratio"][s]]
            for s in r["splits"]]
    return ["## Images per split and class (readable)", "",
            *_table(["split", *classes, "total", "imbalance (max/min)"], rows)]


def _patients_section(r: dict[str, Any]) -> list[str]:
    p = r["patients"]
    lines = ["## Patients", "", *_table(["split", "patients", "file names not matching the pattern"],
                                         [[s, p["per_split"][s], p["unmatched_pattern"][s]] for s in r["splits"]])]
    for pair, o in p["overlap"].items():
        a, b = pair.split("/")
        lines.append(f"- **{a} and {b} share {o['patients']} patients** ({o['images'][a]} {a} images, "
                     f"{o['images'][b]} {b} images)")
    if not p["overlap"]:
        lines.append("- no patient appears in two splits")
    sources = p.get("id_sources") or {}
    if sources.get("dicom"):
        lines.append(f"- patient ids of {sources['dicom']} images from the DICOM PatientID element, "
                     f"{sources.get('file_name', 0)} from file names (data.patient_id_pattern), "
                     f"{sources.get('file_stem', 0)} from neither (one image = one patient)")
    return lines + [""]


def _images_section(r: dict[str, Any]) -> list[str]:
    rows = [[s, _size(i["min_size"]), _size(i["max_size"]),
             f"{_size(i['most_common_size'])} ({i['most_common_count']})",
             ", ".join(f"{m} {n}" for m, n in i["modes"].items())] for s, i in r["images"].items()]
    d = r["duplicates"]
    return ["## Image sizes and modes", "", *_table(["split", "min", "max", "most common", "modes"], rows),
            "## Duplicates", "",
            f"- identical-pixel groups: {d['groups']} (within a split {d['within_split']}, across splits "
            f"{d['cross_split']}, under two labels {d['label_conflict']})",
            f"- near-duplicate pairs: {d['near_duplicate_pairs']} confirmed (256-bit perceptual hash distance <= "
            f"{r['settings']['near_duplicate_confirm_distance']}) of {d['near_duplicate_candidates']} candidates "
            f"screened (64-bit distance <= {r['settings']['near_duplicate_distance']})", "",
            *_source_section(r)]


def _source_section(r: dict[str, Any]) -> list[str]:
    confounds = r.get("source_confounds") or {}
    if not confounds:
        return []
    return ["## Classes told apart by storage alone", "",
            "Balanced accuracy of telling each class from the others by one attribute alone (leave-one-out; chance "
            f"0.5, warning at {r['settings']['source_confound_threshold']}):", "",
            *_table(["attribute", *r["classes"]],
                    [[a, *(v["balanced_accuracy"].get(c) for c in r["classes"])] for a, v in confounds.items()])]


def _findings_section(title: str, findings: list[dict[str, Any]]) -> list[str]:
    lines = [f"## {title} ({len(findings)})", ""]
    if not findings:
        return lines + ["none", ""]
    lines += [f"- `{f['check']}`: {f['message']}" for f in findings[:MAX_LISTED]]
    if len(findings) > MAX_LISTED:
        lines.append(f"- ... and {len(findings) - MAX_LISTED} more (see validation.json)")
    return lines + [""]


def _excluded_line(r: dict[str, Any]) -> str:
    e = r["excluded"]
    patterns = ", ".join(f"`{p}`" for p in e["patterns"]) or "none"
    shown = ", ".join(f"`{p}`" for p in e["paths"][:3]) + (" ..." if e["count"] > 3 else "")
    return f"- skipped by data.exclude ({patterns}): {e['count']} files" + (f", e.g. {shown}" if e["count"] else "")


def render_markdown(r: dict[str, Any]) -> str:
    """A readable version of the report dict (the JSON written beside it is the complete one)."""
    status = "OK" if r["ok"] else "FAILED"
    t = r["timing"]
    lines = [f"# Dataset validation: {status}", "",
             f"- root: `{r['root']}`", f"- classes: {', '.join(r['classes'])}; splits: {', '.join(r['splits'])}",
             f"- image files: {r['n_files']} ({r['n_usable']} readable)",
             _excluded_line(r),
             f"- content hash: `{r['content_hash']}`",
             f"- time: {t['total_s']} s ({t['images_per_s']} images/s decoding)", "",
             *_counts_section(r), *_patients_section(r), *_images_section(r),
             "## Checks", "",
             *_table(["check", "severity", "findings"],
                     [[c, v["severity"], v["count"]] for c, v in r["checks"].items()]),
             *_findings_section("Errors", r["errors"]), *_findings_section("Warnings", r["warnings"])]
    return "\n".join(lines)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_validation_summary(report: ValidationReport) -> str:
    """A few lines for the CLI: status, counts, which checks fired, where the report is."""
    s = report.stats
    per_split = ", ".join(f"{sp} {sum(s['counts'][sp].values())}" for sp in s["splits"])
    lines = [f"validation {'OK' if report.ok else 'FAILED'}: {s['n_usable']}/{s['n_files']} images readable "
             f"({per_split}); {len(report.errors)} errors, {len(report.warnings)} warnings"]
    if s["excluded"]["count"]:
        lines.append(f"  skipped by data.exclude: {s['excluded']['count']} files (e.g. {s['excluded']['paths'][0]})")
    for label, findings in (("errors", report.errors), ("warnings", report.warnings)):
        fired: dict[str, int] = {}
        for f in findings:
            fired[f.check] = fired.get(f.check, 0) + 1
        if fired:
            lines.append(f"  {label}: " + ", ".join(f"{c} {n}" for c, n in sorted(fired.items())))
        if label == "errors":  # the first message of each failed check, so the console says what to fix
            first = {f.check: f.message for f in reversed(findings)}
            lines += [f"    {check}: {_clip(message)}" for check, message in sorted(first.items())]
    for pair, o in s["patients"]["overlap"].items():
        lines.append(f"  patients shared by {pair.replace('/', ' and ')}: {o['patients']}")
    lines.append(f"  report: {report.md_path} (and {report.json_path.name})")
    return "\n".join(lines)
