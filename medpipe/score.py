"""Batch scoring: every image under a folder -> one CSV row of class probabilities, with ONNX Runtime.

The row holds the model's probabilities (`prob_<class>`, what the predicted class is the arg-max of) and, for a
model whose metadata carries a prior correction (`medpipe.priors`), the risks `risk_<class>`: the same
probabilities moved from the balanced training prior to the training set's prevalence, to be read as calibrated
probabilities. Models exported before the correction existed keep the old columns.

Images go through `medpipe.preprocess.load_image`, the function that built the training/evaluation cache, so a
model sees in production exactly the pixels it was evaluated on. Decoding runs in a thread pool (PIL releases the
GIL) a couple of batches ahead of inference, so decoding and ONNX Runtime overlap. Files that cannot be scored
(unsupported type, corrupt, too large, a link leading outside the folder) go to `<output stem>.errors.csv` with
the reason; they are counted, never fatal. Every file found under the folder ends up in exactly one row of the two
files, which is checked before they are written. Outputs are written atomically; an existing output is kept unless
`resume` (score only what is missing, keep its rows) or `overwrite` is asked for.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from collections import Counter, deque
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medpipe.config import Config
from medpipe.data.layout import excluded_by
from medpipe.fileio import atomic_output
from medpipe.model_trust import local_source, verification
from medpipe.onnx_runtime import active_provider, create_session, read_model_info
from medpipe.preprocess import IMAGE_EXTENSIONS, ImageError, is_supported_image, load_image, preprocess_options
from medpipe.priors import apply_prior_correction, deployment_correction, read_output_prior
from medpipe.precision import resolve_for_scoring
from medpipe.store import open_store

__all__ = ["score_folder", "list_input_files", "errors_path_for", "ScoreError"]

_logger = logging.getLogger(__name__)
_PREFETCH_BATCHES = 2  # decode this many batches ahead of inference
_SHOWN_PATHS = 5  # paths an error or warning lists before "..."


class ScoreError(RuntimeError):
    """Scoring cannot start (bad paths, an existing output, an output from another model version), or its rows do
    not account for every input file exactly once."""


def errors_path_for(output_csv: str | Path) -> Path:
    """`preds.csv` -> `preds.errors.csv`: where the files that could not be scored are listed."""
    output_csv = Path(output_csv)
    return output_csv.with_name(f"{output_csv.stem}.errors.csv")


def list_input_files(input_dir: Path, exclude: Sequence[str] = (),
                     markers: Sequence[str] = ()) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Walk `input_dir` recursively in a stable order; names matching an `exclude` glob are skipped, and said so.
    `markers` are file names at the top of `input_dir` that are not inputs at all (an inbox batch's _READY).

    Returns:
        (images as (relative POSIX path, path), errors as (relative path, reason) for files not to be scored).
    """
    root = input_dir.resolve()
    images, errors = [], []
    for path in sorted(p for p in input_dir.rglob("*") if not p.is_dir()):
        rel = path.relative_to(input_dir).as_posix()
        if rel in markers:
            continue
        matched = excluded_by(path.name, exclude)
        if matched is not None:
            errors.append((rel, f"file name matches data.exclude pattern {matched!r} (not an image to classify); "
                                "skipped"))
        elif not path.resolve().is_relative_to(root):
            errors.append((rel, "a link leading outside the input folder; refused"))
        elif not path.is_file():
            errors.append((rel, "not a regular file (broken link, socket or device)"))
        elif not is_supported_image(path):
            errors.append((rel, f"unsupported file type {path.suffix or '(no extension)'!r}; "
                                f"expected one of {sorted(IMAGE_EXTENSIONS)} or a DICOM file"))
        else:
            images.append((rel, path))
    return images, errors


def _read_existing(output_csv: Path, header: list[str], version: str) -> list[list[str]]:
    """Rows of an earlier output to keep on --resume; refuses a different layout or model version."""
    with output_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        found = next(reader, None)
        if found != header:
            raise ScoreError(f"--resume: {output_csv} has columns {found}, expected {header}; "
                             "it was written by another model, so score into a new file")
        rows = [row for row in reader if row]
    versions = sorted({row[-1] for row in rows} - {version})
    if versions:
        raise ScoreError(f"--resume: {output_csv} holds rows of model version(s) {versions}, now scoring with "
                         f"{version!r}; mixing versions in one file is refused, score into a new file")
    return rows


def _keep_current(rows: list[list[str]], images: list[tuple[str, Path]], output_csv: Path) -> list[list[str]]:
    """The rows of an earlier output to keep on --resume: one per path, for files that are images to score now.

    A row for a file that has left the folder, is now refused (it gets a row in the errors file) or repeats a
    path would put a file in the outputs twice, or one that is not there; such rows are dropped, with a warning.
    """
    current = {rel for rel, _ in images}
    kept, seen, dropped = [], set(), []
    for row in rows:
        if row[0] in current and row[0] not in seen:
            kept.append(row)
            seen.add(row[0])
        else:
            dropped.append(row[0])
    if dropped:
        _logger.warning("--resume: dropped %d row(s) of %s for files no longer in the input folder, now refused (see "
                        "the errors file) or listed twice: %s", len(dropped), output_csv, _some(dropped))
    return kept


def _some(paths: Collection[str]) -> str:
    """The first few paths, for a message."""
    shown = ", ".join(sorted(paths)[:_SHOWN_PATHS])
    return shown + (", ..." if len(paths) > _SHOWN_PATHS else "")


def _check_accounted(found: list[str], rows: list[list[str]], errors: list[tuple[str, str]]) -> None:
    """Raise ScoreError unless every found file is in exactly one prediction or error row, and no row is for
    a file that was not found: whatever goes wrong in batching or resuming, no file goes missing unnoticed."""
    counts = Counter([row[0] for row in rows] + [rel for rel, _ in errors])
    wrong = {"in neither": set(found) - set(counts),
             "in more than one row": {rel for rel, n in counts.items() if n > 1},
             "not found in the input folder": set(counts) - set(found)}
    problems = [f"{len(paths)} {what} ({_some(paths)})" for what, paths in wrong.items() if paths]
    if problems:
        raise ScoreError(f"scoring lost track of files: {len(found)} found, {len(rows)} prediction rows and "
                         f"{len(errors)} error rows; {'; '.join(problems)}. Nothing was written")


def _decode_batches(files: list[tuple[str, Path]], size: int, max_pixels: int, batch_size: int, workers: int,
                    preprocessing: dict[str, bool]) -> Iterator[list[tuple[str, np.ndarray | ImageError]]]:
    """Yield batches of (rel, image or ImageError) in file order while the pool keeps decoding ahead."""

    def _load(path: Path) -> np.ndarray | ImageError:
        try:
            return load_image(path, size, max_pixels, **preprocessing)
        except ImageError as exc:
            return exc

    pending: deque[tuple[str, Future]] = deque()
    todo = iter(files)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:

        def _fill() -> None:
            while len(pending) < batch_size * _PREFETCH_BATCHES:
                item = next(todo, None)
                if item is None:
                    return
                pending.append((item[0], pool.submit(_load, item[1])))

        try:
            _fill()
            while pending:
                batch = []
                while pending and len(batch) < batch_size:
                    rel, future = pending.popleft()
                    batch.append((rel, future.result()))
                    _fill()
                yield batch
        finally:
            for _, future in pending:  # stopped early: do not decode what nobody will read
                future.cancel()


def _write_csv_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _check_paths(input_dir: Path, output_csv: Path, resume: bool, overwrite: bool) -> None:
    if not input_dir.is_dir():
        raise ScoreError(f"input folder {input_dir} does not exist or is not a folder")
    if output_csv.resolve().is_relative_to(input_dir.resolve()):
        raise ScoreError(f"output {output_csv} is inside the input folder {input_dir}: it would be scored as an "
                         "input on the next run; write it elsewhere")
    if resume and overwrite:
        raise ScoreError("--resume and --overwrite exclude each other: resume keeps the rows, overwrite drops them")
    if output_csv.exists() and not (resume or overwrite):
        raise ScoreError(f"output {output_csv} already exists; pass --resume to score only the missing files or "
                         "--overwrite to replace it")


def _risk_factors(info: Any, prevalence: list[float] | None,
                  model_ref: str | Path) -> tuple[list[float] | None, list[float] | str | None]:
    """The factors behind the risk columns and the prevalence they assume ("training", or score.prevalence).

    For a deployment prevalence pi_d the factors are pi_d / the outputs' prior (medpipe.priors), which the model
    metadata records as output_prior.
    """
    if prevalence is None or info.prior_correction is None:
        if prevalence is not None:
            raise ScoreError(f"score.prevalence is set but model {model_ref} records no prior correction (exported "
                             "before medpipe recorded it): its outputs' prior is unknown; re-export it")
        return info.prior_correction, None if info.prior_correction is None else "training"
    if len(prevalence) != len(info.classes):
        raise ScoreError(f"score.prevalence has {len(prevalence)} values; model {model_ref} has {len(info.classes)} "
                         f"classes {info.classes}: give one per class, in that order")
    output_prior = read_output_prior(info.metadata)
    if output_prior is None:
        raise ScoreError(f"score.prevalence: model {model_ref} does not record output_prior; re-export it")
    return deployment_correction(prevalence, output_prior)


def _header(classes: list[str], corrected: bool) -> list[str]:
    """The CSV columns; model_version stays last (`_read_existing` reads it there). model_verified: whether the
    model's bytes were checked against the registry (medpipe.model_trust), on every row so no row travels without
    it."""
    risks = [f"risk_{c}" for c in classes] if corrected else []
    return ["path", "predicted", *(f"prob_{c}" for c in classes), *risks, "model_verified", "model_version"]


def _score_files(session: Any, files: list[tuple[str, Path]], cfg: Config, size: int, labels: tuple[str, str],
                 rows: list[list[str]], errors: list[tuple[str, str]], classes: list[str],
                 factors: list[float] | None, preprocessing: dict[str, bool]) -> None:
    """Append one row per scored image to `rows` and one entry per failure to `errors`, in place.

    `factors`: the model's prior correction; when given, each row also holds the corrected probabilities.
    `preprocessing`: `load_image` options of the model (medpipe.preprocess.preprocess_options).
    """
    input_name = session.get_inputs()[0].name
    batches = _decode_batches(files, size, cfg.data.max_pixels, cfg.score.batch_size, cfg.score.decode_workers,
                              preprocessing)
    with tqdm(total=len(files), desc="score", unit="img", disable=None) as bar:
        for batch in batches:
            good = [(rel, arr) for rel, arr in batch if isinstance(arr, np.ndarray)]
            errors.extend((rel, exc.reason) for rel, exc in batch if isinstance(exc, ImageError))
            if good:
                x = np.stack([arr for _, arr in good])[:, None].astype(np.float32)
                probs = session.run(None, {input_name: x})[0]
                # The decision stays the arg-max of the raw (balanced) probabilities: the correction is for
                # reading values as risks, and would trade minority-class recall for accuracy if it decided.
                risks = apply_prior_correction(probs, factors) if factors is not None else np.empty((len(good), 0))
                for (rel, _), p, r in zip(good, probs, risks):
                    rows.append([rel, classes[int(np.argmax(p))], *(f"{v:.6f}" for v in p),
                                 *(f"{v:.6f}" for v in r), *labels])
            bar.update(len(batch))


def score_folder(model_ref_or_path: str | Path, input_dir: str | Path, output_csv: str | Path, cfg: Config,
                 store: Any = None, resume: bool = False, overwrite: bool = False,
                 markers: Sequence[str] = (), registry_source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every image under `input_dir` with an ONNX model; one CSV row per image.

    Args:
        model_ref_or_path: "champion", a version ("VERSION" or "MODEL/VERSION") in the store, or a local .onnx
            file (scored as is), or a release folder holding model.onnx (and maybe model.int8.onnx).
        input_dir: scanned recursively; paths in the CSV are relative to it.
        output_csv: columns path, predicted, prob_<class>..., then risk_<class>... when the model carries a prior
            correction, then model_verified ("true"/"false") and model_version. Must not be inside input_dir.
        cfg: the config (score.batch_size, score.decode_workers, score.provider, score.precision, data.max_pixels,
            store).
        store: the model store; default `open_store(cfg.store)` when a store reference is given.
        resume: keep the rows of an existing output and score only the files it lacks.
        overwrite: replace an existing output.
        markers: file names at the top of `input_dir` that are signals, not inputs (medpipe.inbox's _READY).
        registry_source: for a local file the caller resolved from the store, `resolve_model`'s info: the run is
            verified when the file's sha256 is the recorded one. Any other local file is scored, unverified.

    Returns:
        Summary: output, errors_file, provider, precision ("fp32" | "int8", read from the model that ran),
        precision_reason (how it was chosen), model_file, model_version, model_name, model_sha256, files, scored, kept,
        errors, dropped (rows of an earlier output dropped on resume: their files are gone or now refused),
        seconds, images_per_s, prior_correction (the factors behind the risk columns, None without them),
        verified and verification (medpipe.model_trust: whether the model's sha256 was checked by the registry, why).
    """
    input_dir, output_csv = Path(input_dir), Path(output_csv)
    _check_paths(input_dir, output_csv, resume, overwrite)
    with tempfile.TemporaryDirectory(prefix="medpipe-model-") as tmp:
        # A registry download is verified against the published sha256 (IntegrityError otherwise); which file
        # (FP32 or INT8) follows score.precision and the provider (medpipe.precision).
        ref = str(model_ref_or_path)
        needs_store = store is None and not Path(ref).exists() and not ref.endswith(".onnx")  # a registry ref
        onnx_path, source = resolve_for_scoring(model_ref_or_path, open_store(cfg.store) if needs_store else store,
                                                Path(tmp), cfg.score.precision, cfg.score.provider)
        if source.get("source") == "local":  # outside the store: vouched for only by a matching registry record
            source = {**source, **local_source(onnx_path, registry_source)}
        session = create_session(onnx_path, cfg.score.provider, cfg.score.intra_op_threads)
    info = read_model_info(session, source.get("uri", onnx_path))
    try:  # the model's own preprocessing (version + options), so its pixels are the ones it was evaluated on
        options = preprocess_options(info.preprocess_version)
    except ValueError as exc:
        raise ScoreError(f"model {model_ref_or_path}: trained on pixels whose {exc}; its predictions would not "
                         "match its evaluation; score with the medpipe release it came from") from None
    version = str(source.get("version") or info.version or "unversioned")
    trust = verification(source, version)
    if not trust["verified"]:
        _logger.warning("UNVERIFIED model: %s; every row says model_verified=false", trust["reason"])
    factors, risk_prevalence = _risk_factors(info, cfg.score.prevalence, model_ref_or_path)
    header = _header(info.classes, factors is not None)
    earlier = _read_existing(output_csv, header, version) if resume and output_csv.exists() else []
    images, errors = list_input_files(input_dir, cfg.data.exclude, markers)
    found = [rel for rel, _ in images] + [rel for rel, _ in errors]
    rows = _keep_current(earlier, images, output_csv)
    kept = len(rows)
    done = {row[0] for row in rows}
    todo = [(rel, path) for rel, path in images if rel not in done]
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        _score_files(session, todo, cfg, info.input_size, (str(trust["verified"]).lower(), version), rows, errors,
                     info.classes, factors, options)
    except BaseException:
        # Interrupted: keep what was scored (with the kept rows) so --resume continues, unless that would
        # replace an output the caller asked to overwrite only once scoring completes.
        if len(rows) > kept and not (overwrite and output_csv.exists()):
            _write_csv_atomic(output_csv, header, rows)
            _logger.warning("interrupted: %d rows saved to %s; rerun with --resume to finish", len(rows), output_csv)
        raise
    seconds = time.perf_counter() - started
    _check_accounted(found, rows, errors)
    _write_csv_atomic(output_csv, header, rows)
    errors_file = errors_path_for(output_csv)
    _write_csv_atomic(errors_file, ["path", "reason"], [list(e) for e in errors])
    scored = len(rows) - kept
    summary = {"output": str(output_csv), "errors_file": str(errors_file), "provider": active_provider(session),
               "precision": info.precision, "precision_reason": source.get("precision_reason"),
               "model_file": Path(onnx_path).name,
               "model_version": version, "model_name": info.model_name, "model_sha256": source.get("sha256"),
               "files": len(found), "scored": scored, "kept": kept,
               "errors": len(errors), "dropped": len(earlier) - kept, "seconds": round(seconds, 3),
               "images_per_s": round(scored / seconds, 1) if seconds > 0 and scored else None,
               "prior_correction": factors, "risk_prevalence": risk_prevalence, "verified": trust["verified"],
               "verification": trust["reason"]}
    _logger.info("scored %d images (%d kept from before, %d errors) with %s (%s, %s: %s) on %s in %.1f s", scored,
                 kept, len(errors), version, summary["model_file"], info.precision.upper(), summary["precision_reason"],
                 summary["provider"], seconds)
    return summary
