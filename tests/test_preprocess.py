"""The one preprocessing path: every format becomes 2-D uint8; bad files raise ImageError with a check kind."""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe.preprocess import ImageError, decode_image, load_image, resize_image

SIZE = 40


def _gradient(size: int = SIZE) -> np.ndarray:
    return np.tile(np.linspace(0, 255, size).astype(np.uint8), (size, 1))


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height but holds no pixel data: only a header reader can size it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _formats(tmp: Path) -> dict[str, Path]:
    """One file per format the project must read, all of the same gradient."""
    grad = _gradient()
    files = {}
    files["gray16_png"] = tmp / "g16.png"
    Image.fromarray(grad.astype(np.uint16) * 16).save(files["gray16_png"])  # 12-bit data in a 16-bit container
    files["rgba_png"] = tmp / "rgba.png"
    Image.fromarray(np.dstack([grad, grad, grad, np.full_like(grad, 255)]), mode="RGBA").save(files["rgba_png"])
    files["palette_png"] = tmp / "pal.png"
    palette = Image.fromarray(grad, mode="L").convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(files["palette_png"])
    files["rgb_jpeg"] = tmp / "rgb.jpg"
    Image.fromarray(np.dstack([grad, grad, grad]), mode="RGB").save(files["rgb_jpeg"], quality=95)
    files["gray_jpeg"] = tmp / "gray.jpg"
    Image.fromarray(grad, mode="L").save(files["gray_jpeg"], quality=95)
    files["la_png"] = tmp / "la.png"
    Image.fromarray(np.dstack([grad, np.full_like(grad, 255)]), mode="LA").save(files["la_png"])
    files["gray16_tiff"] = tmp / "g16.TIFF"  # 12-bit data, upper-case extension
    Image.fromarray(grad.astype(np.uint16) * 16).save(files["gray16_tiff"])
    files["float_tiff"] = tmp / "f.tif"
    Image.fromarray(grad.astype(np.float32) / 255 - 0.5).save(files["float_tiff"])  # -0.5..0.5, mode F
    files["rgb_bmp"] = tmp / "rgb.bmp"
    Image.fromarray(np.dstack([grad, grad, grad]), mode="RGB").save(files["rgb_bmp"])
    return files


@pytest.mark.parametrize("kind", ["gray16_png", "rgba_png", "palette_png", "rgb_jpeg", "gray_jpeg", "la_png",
                                  "gray16_tiff", "float_tiff", "rgb_bmp"])
def test_every_format_decodes_to_2d_uint8(tmp_path: Path, kind: str) -> None:
    path = _formats(tmp_path)[kind]
    expected_mode = {"gray16_png": "I;16", "rgba_png": "RGBA", "palette_png": "P", "rgb_jpeg": "RGB",
                     "gray16_tiff": "I;16", "float_tiff": "F", "rgb_bmp": "RGB"}.get(kind)
    if expected_mode:  # the file really is stored in the format the test claims
        assert Image.open(path).mode == expected_mode
    arr = decode_image(path, max_pixels=10_000)
    assert arr.dtype == np.uint8 and arr.shape == (SIZE, SIZE)
    # Same gradient in every format: dark on the left, bright on the right (JPEG/palette allow some error).
    assert np.abs(arr.astype(int) - _gradient().astype(int)).mean() < 4
    small = load_image(path, 32)
    assert small.shape == (32, 32) and small.dtype == np.uint8
    big = load_image(path, 64)
    assert big.shape == (64, 64) and big.dtype == np.uint8


def test_16bit_is_stretched_to_full_range(tmp_path: Path) -> None:
    """12-bit data in a 16-bit PNG must not come out nearly black (which dividing by 257 would do)."""
    raw = (_gradient().astype(np.uint16) * 16)  # max 4080 of 65535
    Image.fromarray(raw).save(tmp_path / "x.png")
    arr = decode_image(tmp_path / "x.png", 10_000)
    assert arr.min() == 0 and arr.max() == 255


def test_multi_frame_tiff_is_refused_naming_the_frames(tmp_path: Path) -> None:
    frames = [Image.fromarray(_gradient()), Image.fromarray(_gradient()[::-1])]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="stack.tif.*TIFF with 2 frames; expected a single image"):
        decode_image(tmp_path / "stack.tif", 10_000)


def test_transparent_pixels_become_black(tmp_path: Path) -> None:
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, : SIZE // 2, 3] = 0  # left half fully transparent
    rgba[:, SIZE // 2:, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    arr = decode_image(tmp_path / "a.png", 10_000)
    assert (arr[:, : SIZE // 2] == 0).all() and (arr[:, SIZE // 2:] == 200).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((20, 40), np.uint8), mode="L")  # 40 wide, 20 high
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert decode_image(tmp_path / "r.jpg", 10_000).shape == (40, 20)


def test_bad_files_raise_image_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    Image.fromarray(_gradient(), mode="L").save(tmp_path / "full.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    for path, words in ((empty, "0 bytes"), (text, "not a recognised image"), (truncated, "truncated")):
        with pytest.raises(ImageError) as info:
            decode_image(path, 10_000)
        assert info.value.kind == "unreadable"
        assert path.name in str(info.value) and words in info.value.reason
    with pytest.raises(ImageError, match="missing.png") as info:
        decode_image(tmp_path / "missing.png", 10_000)
    assert info.value.kind == "unreadable"


def test_too_large_is_refused_from_the_header_alone(tmp_path: Path) -> None:
    """A header claiming 9000x9000 with no pixel data: too_large, never 'truncated' (it was not decoded)."""
    bomb = write_png_header_only(tmp_path / "bomb.png", 9000, 9000)
    with pytest.raises(ImageError) as info:
        decode_image(bomb, max_pixels=64_000_000)
    assert info.value.kind == "too_large" and "81000000" in info.value.reason and "bomb.png" in str(info.value)
    # Beyond PIL's own bomb limit (2 x Image.MAX_IMAGE_PIXELS) PIL refuses at open: still too_large.
    huge = write_png_header_only(tmp_path / "huge.png", 30000, 30000)
    with pytest.raises(ImageError) as info:
        decode_image(huge, max_pixels=64_000_000)
    assert info.value.kind == "too_large"
    # A real image over a small limit.
    Image.fromarray(_gradient(), mode="L").save(tmp_path / "ok.png")
    with pytest.raises(ImageError) as info:
        decode_image(tmp_path / "ok.png", max_pixels=SIZE * SIZE - 1)
    assert info.value.kind == "too_large"


def test_decoding_in_threads_gives_the_same_pixels(tmp_path: Path) -> None:
    """Validation and scoring decode in threads: results must equal a serial decode, bad files still refused."""
    paths = list(_formats(tmp_path).values())
    bomb = write_png_header_only(tmp_path / "bomb.png", 9000, 9000)
    serial = [decode_image(p, 10_000) for p in paths]

    def decode(p: Path) -> np.ndarray | str:
        try:
            return decode_image(p, 10_000)
        except ImageError as exc:
            return exc.kind

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(decode, (paths + [bomb]) * 8))
    for i, result in enumerate(results):
        if i % (len(paths) + 1) == len(paths):
            assert result == "too_large"
        else:
            assert np.array_equal(result, serial[i % (len(paths) + 1)])


def test_resize_keeps_an_array_of_the_right_size_unchanged() -> None:
    arr = _gradient(32)
    assert resize_image(arr, 32) is arr
    assert resize_image(arr, 16).shape == (16, 16)
