"""The one image preprocessing function used by caching, evaluation and scoring.

Every image, whatever its format (JPEG/PNG/TIFF/BMP/DICOM, 8- or 16-bit or float, grayscale/RGB/RGBA/palette),
becomes a single-channel uint8 array of size x size. Training, evaluation and ONNX scoring all go through
`load_image`, so a model sees exactly the same pixels in production as in its evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medpipe.dicom import DICOM_EXTENSIONS, decode_dicom, dicom_mode, is_dicom_path
from medpipe.pixels import stretch_to_uint8  # re-exported: medpipe.preprocess.stretch_to_uint8 stays importable

__all__ = ["ImageError", "IMAGE_EXTENSIONS", "is_supported_image", "stored_mode", "decode_image", "resize_image",
           "stretch_to_uint8", "load_image", "largest_region_mask", "preprocess_id", "preprocess_options",
           "PREPROCESS_VERSION"]

# JPEG and PNG, plus TIFF (8/16-bit and float, as mammography and microscopy exports often are) and BMP (some
# ultrasound machines export it): all decoded by PIL into the same conversion below. DICOM (.dcm, .dicom, or
# no extension with the DICOM marker, as PACS exports come) goes through medpipe.dicom.
_PIL_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
IMAGE_EXTENSIONS = _PIL_EXTENSIONS | DICOM_EXTENSIONS
# Bumped whenever the pixels produced here change: it is part of the cache key and of exported model metadata.
PREPROCESS_VERSION = "1"
# Options change the pixels too, so they travel with the version: "1" plain, "1+largest_region2" with the option.
# "largest_region" (no 2) was the first mask, which kept labels and film borders that touch the breast.
_LARGEST_REGION = "largest_region2"
_MASK_MAX_SIDE = 1024
_RETIRED_OPTIONS = {"largest_region": "the first largest-region mask (it kept labels and film borders touching "
                                      "the breast); retrain with this medpipe"}


class ImageError(ValueError):
    """An image cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str, kind: str = "unreadable") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind  # a validation check name: "unreadable" or "too_large"


def is_supported_image(path: str | Path) -> bool:
    """Whether `path` is a file type we decode: a known extension, or no extension and the DICOM marker."""
    path = Path(path)
    return path.suffix.lower() in _PIL_EXTENSIONS or is_dicom_path(path)


def stored_mode(path: str | Path) -> str:
    """The pixel format as stored, before conversion (PIL's mode, or e.g. "DICOM MONOCHROME1 12-bit")."""
    if is_dicom_path(Path(path)):
        return dicom_mode(path)
    with Image.open(path) as img:  # header only
        return img.mode


def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to 8-bit grayscale.

    16-bit and 32-bit images are rescaled by their own min..max: medical PNGs often hold 10-12 bit data in a
    16-bit container, and dividing by 257 would leave them nearly black.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return stretch_to_uint8(np.asarray(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become black, the background of every medical image we know.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "L":
        img = img.convert("RGB").convert("L")
    return np.asarray(img, dtype=np.uint8)


def decode_image(path: str | Path, max_pixels: int) -> np.ndarray:
    """Decode an image file at its native size into a 2-D uint8 array.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).

    Returns:
        (H, W) uint8 array.

    Raises:
        ImageError: zero-byte, truncated, not an image, or too large — the message says which.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageError(path, "file is empty (0 bytes)")
    if is_dicom_path(path):
        return decode_dicom(path, max_pixels, ImageError)
    # No warnings.catch_warnings() here: it swaps process-global state and this function runs in threads
    # (validation, scoring). Image.open reads only the header, so the size check below refuses a bomb before
    # any pixel is decoded; PIL's own DecompressionBombError (above 2 x Image.MAX_IMAGE_PIXELS) is caught too.
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    path, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                    "(data.max_pixels); refused without decoding", kind="too_large",
                )
            if img.format == "TIFF" and getattr(img, "n_frames", 1) > 1:
                # A stack (slices, a tomosynthesis series, pages) is not one image; taking frame 0 would hide it.
                raise ImageError(path, f"TIFF with {img.n_frames} frames; expected a single image per file")
            img.load()  # forces a full decode, so truncated files fail here and not later
            img = ImageOps.exif_transpose(img)
            return _to_uint8_gray(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format (expected JPEG, PNG, TIFF, BMP or DICOM)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"refused as a decompression bomb: {exc}", kind="too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncated data as OSError ("image file is truncated") and bad headers as SyntaxError.
        raise ImageError(path, f"cannot decode image (truncated or corrupt): {exc}") from None


def preprocess_id(largest_region_only: bool = False) -> str:
    """The preprocessing identity recorded in caches, checkpoints and ONNX metadata (PREPROCESS_VERSION +
    options): scoring re-creates exactly the pixels a model was trained and evaluated on from it."""
    return PREPROCESS_VERSION + (f"+{_LARGEST_REGION}" if largest_region_only else "")


def preprocess_options(identity: str | None) -> dict[str, bool]:
    """The keyword arguments of `load_image` that `identity` (from `preprocess_id`) stands for.

    Raises:
        ValueError: another version, or an option this medpipe does not know.
    """
    version, *options = (identity or PREPROCESS_VERSION).split("+")
    retired = [f"{o!r} is {_RETIRED_OPTIONS[o]}" for o in options if o in _RETIRED_OPTIONS]
    if retired:
        raise ValueError(f"preprocessing {identity!r} is not one this medpipe produces: {'; '.join(retired)}")
    unknown = [o for o in options if o != _LARGEST_REGION]
    if version != PREPROCESS_VERSION or unknown:
        raise ValueError(f"preprocessing {identity!r} is not one this medpipe produces (version "
                         f"{PREPROCESS_VERSION}, options: {_LARGEST_REGION})")
    return {"largest_region_only": _LARGEST_REGION in options}


def _otsu_threshold(arr: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image (the grey level that best separates two classes of pixels)."""
    hist = np.bincount(arr.ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1.0 - w0), 1e-12)
    return int(np.argmax(between))


def largest_region_mask(arr: np.ndarray) -> np.ndarray:
    """The largest bright region of a (H, W) uint8 image, holes filled, grown by 2 pixels.

    On a mammogram that region is the breast; film labels, orientation markers and scanner borders fall outside.
    The threshold (half of Otsu's, at least 8) sits low so the faint skin line stays in. Labels and film borders
    often touch the breast through a thin bright strip, so the region is chosen after an opening that cuts strips
    narrower than ~4 % of the image's short side, then grown back over its own pixels by as much: the breast
    keeps its edge, the strip keeps a stub, the label is left out. Over 1024 px a side, the region is found on
    the thresholded pixels scaled to 1024 (the opening's cost grows with its radius). No bright pixel: keep all.
    """
    foreground = arr > max(_otsu_threshold(arr) // 2, 8)
    if max(arr.shape) <= _MASK_MAX_SIDE:
        return _main_region(foreground)
    scale = _MASK_MAX_SIDE / max(arr.shape)
    small_size = (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale)))
    small = np.asarray(Image.fromarray(foreground.astype(np.uint8) * 255, mode="L").resize(
        small_size, Image.Resampling.BOX)) >= 128
    region = Image.fromarray(_main_region(small).astype(np.uint8) * 255, mode="L")
    return np.asarray(region.resize(arr.shape[::-1], Image.Resampling.NEAREST)) > 0


def _main_region(foreground: np.ndarray) -> np.ndarray:
    """`largest_region_mask` on a thresholded image: opening, largest part, grown back, holes filled."""
    from scipy import ndimage

    radius = max(1, round(min(foreground.shape) * 0.02))
    cross = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_opening(foreground, structure=cross, iterations=radius)
    if not core.any():  # nothing survives the opening (a tiny or thin image): the plain largest region
        core = foreground
    labels, count = ndimage.label(core)
    if count == 0:
        return np.ones(foreground.shape, dtype=bool)
    sizes = ndimage.sum_labels(core, labels, index=np.arange(1, count + 1))
    region = labels == 1 + int(np.argmax(sizes))
    region |= ndimage.binary_dilation(region, structure=cross, iterations=radius + 1) & foreground
    return ndimage.binary_dilation(ndimage.binary_fill_holes(region), iterations=2)


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a (H, W) uint8 array to (size, size) with antialiased bilinear filtering."""
    if arr.shape == (size, size):
        return arr
    img = Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def load_image(path: str | Path, size: int, max_pixels: int = 64_000_000,
               largest_region_only: bool = False) -> np.ndarray:
    """Decode and resize one image: the preprocessing shared by training cache, evaluation and scoring.

    Args:
        largest_region_only: black out everything outside `largest_region_mask` (at native size, before the
            resize): `data.largest_region_only`.

    Returns:
        (size, size) uint8 array.
    """
    arr = decode_image(path, max_pixels)
    if largest_region_only:
        arr = np.where(largest_region_mask(arr), arr, 0).astype(np.uint8)
    return resize_image(arr, size)
