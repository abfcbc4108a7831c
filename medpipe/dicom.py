"""DICOM decoding for the shared preprocessing: what a PACS export or a modality sends, as 8-bit grayscale.

Radiology data arrives as DICOM far more often than as PNG. The displayed image is not the stored integers: the
modality LUT (rescale slope/intercept) gives physical values, the VOI LUT or window centre/width chosen by the
modality says which range is diagnostic, and MONOCHROME1 means "high values are dark". We apply those in the
order the standard gives (pydicom's helpers) and then stretch to 0..255 by the image's own range, as for 16-bit
PNGs, so a DICOM file and its faithful PNG export give the model the same picture.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medpipe.extras import import_extra
from medpipe.pixels import stretch_to_uint8

__all__ = ["DICOM_EXTENSIONS", "decode_dicom", "dicom_mode", "dicom_patient_id", "is_dicom_path", "looks_like_dicom"]

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
_PREAMBLE = 128  # a DICOM Part-10 file: 128-byte preamble, then b"DICM"


def _import_pydicom():
    """pydicom (the `dicom` extra), imported at the first DICOM file: PNG/JPEG datasets never need it."""
    return import_extra("pydicom", "dicom", "reading DICOM files")


def looks_like_dicom(path: str | Path) -> bool:
    """True when the file carries the DICOM Part-10 magic (PACS exports often have no file extension)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(_PREAMBLE)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_path(path: Path) -> bool:
    """A DICOM extension, or no extension and the DICOM marker."""
    suffix = path.suffix.lower()
    return suffix in DICOM_EXTENSIONS or (suffix == "" and looks_like_dicom(path))


def dicom_mode(path: str | Path) -> str:
    """How the pixels are stored, for validation reports: e.g. "DICOM MONOCHROME1 12-bit"."""
    pydicom = _import_pydicom()

    header = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"DICOM {header.get('PhotometricInterpretation', '?')} "
            f"{header.get('BitsStored', header.get('BitsAllocated', '?'))}-bit")


def dicom_patient_id(path: str | Path) -> str | None:
    """The PatientID element (0010,0020), stripped; None when absent, empty or unreadable (decoding reports
    unreadable files)."""
    pydicom = _import_pydicom()

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:
        return None
    value = str(header.get("PatientID", "") or "").strip()
    return value or None


class _PluginFailureFilter(logging.Filter):
    """Drops pydicom's per-plugin decode tracebacks. pydicom logs each decoder plugin's failure with a traceback,
    then raises one error listing them all; medpipe reports that error as the file's skip, so in a batch of
    thousands of compressed files the tracebacks would only repeat it, one screenful per file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


def _quiet_plugin_failures() -> None:
    # A logger's filters only see records created on that logger: the filter sits on the decoders' own (pydicom
    # 3.0), and pydicom's other messages stay as they are.
    logger = logging.getLogger("pydicom.pixels.decoders.base")
    if not any(isinstance(f, _PluginFailureFilter) for f in logger.filters):
        logger.addFilter(_PluginFailureFilter())


def _reason_not_decodable(exc: Exception, ds) -> str:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = f"{syntax.name} ({syntax})" if syntax is not None else "an unknown transfer syntax"
    exc = " ".join(str(exc).split())  # pydicom lists each plugin's failure on its own line: keep one line
    if syntax is not None and syntax.is_compressed:
        return (f"cannot decode the pixel data, stored as {name}: {exc}. Compressed DICOM needs a decoder plugin "
                "(e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg), or export the images "
                "uncompressed or as PNG")
    return f"cannot decode the pixel data, stored as {name} (truncated or corrupt): {exc}"


def decode_dicom(path: str | Path, max_pixels: int, error_type: type[Exception]) -> np.ndarray:
    """Decode one single-frame DICOM image to a 2-D uint8 array at its native size.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this, checked on the header before any pixel is decoded.
        error_type: the exception to raise, called as error_type(path, reason[, kind]) (preprocess.ImageError).

    Raises:
        error_type: not DICOM, no pixel data, a multi-frame object, too large, or undecodable (the reason says
            which transfer syntax and what to install).
    """
    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:  # one parse; values over 1 KiB (the pixel data) are read from the file only when decoded
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        raise error_type(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
    except Exception as exc:  # pydicom raises many types for damaged headers; all mean "unreadable"
        raise error_type(path, f"cannot read the DICOM header (truncated or corrupt): {exc}") from None
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows is None or columns is None:
        modality = ds.get("Modality", "?")
        raise error_type(path, f"DICOM object without an image (SOP class {ds.get('SOPClassUID', '?')}, "
                               f"modality {modality}): no Rows/Columns; expected an image such as MG, US, DX or CR")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if int(rows) * int(columns) > max_pixels:
        raise error_type(path, f"{columns}x{rows} = {int(rows) * int(columns)} pixels exceeds the limit of "
                               f"{max_pixels} (data.max_pixels); refused without decoding", "too_large")
    if frames > 1:
        # A cine loop, a tomosynthesis stack or an enhanced multi-frame object is not one image.
        raise error_type(path, f"DICOM with {frames} frames; expected a single image per file")
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise error_type(path, "DICOM file without pixel data")
    _quiet_plugin_failures()
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise error_type(path, _reason_not_decodable(exc, ds)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour (RGB, or YBR which pydicom converted to RGB): luminance as PIL's "L" computes it
        gray = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.round(gray), 0, 255).astype(np.uint8) if arr.dtype == np.uint8 else stretch_to_uint8(gray)
    out = _display_values(arr, ds)
    return 255 - out if photometric == "MONOCHROME1" else out


def _first(value) -> float:
    """WindowCenter/WindowWidth may hold several choices; the first is the modality's default."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _display_values(arr: np.ndarray, ds) -> np.ndarray:
    """Grayscale DICOM pixels as displayed, 0..255: modality LUT, then the VOI transform the file specifies."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if "VOILUTSequence" not in ds and "WindowCenter" in ds and "WindowWidth" in ds and function == "LINEAR":
        # PS3.3 C.11.2.1.2.1, linear window straight onto 0..255 (scaling by the image's own range instead would
        # stretch an image that does not fill its window).
        center, width = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        scaled = ((np.asarray(values, dtype=np.float64) - (center - 0.5)) / (width - 1 or 1.0) + 0.5) * 255.0
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:  # LUT tables or SIGMOID windows: pydicom's reading
        return stretch_to_uint8(apply_voi_lut(values, ds))
    if arr.dtype == np.uint8 and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        return arr  # 8-bit, no rescale: exactly what its PNG export holds
    return stretch_to_uint8(values)
