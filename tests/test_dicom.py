"""DICOM input: real Part-10 files written with pydicom, decoded by the shared preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from medpipe_testdata import synthetic_image
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.data.validate import validate_dataset
from medpipe.preprocess import ImageError, decode_image, is_supported_image, load_image
from medpipe.score import list_input_files

_MAMMO_SOP = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                patient: str = "P_00001", **elements) -> Path:
    """A Part-10 file with the given pixels and any extra elements (WindowCenter=..., NumberOfFrames=...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MAMMO_SOP
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _MAMMO_SOP, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MG", patient
    ds.set_pixel_data(pixels, photometric_interpretation=photometric,
                      bits_stored=bits_stored or pixels.dtype.itemsize * 8)
    for key, value in elements.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp12() -> np.ndarray:
    return (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 2 + 50)  # 50..4048: 12-bit data


def test_12_bit_monochrome2_is_stretched_like_a_16_bit_png(tmp_path: Path) -> None:
    pixels = _ramp12()
    dicom = decode_image(write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12), 10**6)
    Image.fromarray(pixels).save(tmp_path / "a.png")  # the same integers as a 16-bit PNG
    assert dicom.dtype == np.uint8 and dicom.shape == (40, 50)
    assert np.array_equal(dicom, decode_image(tmp_path / "a.png", 10**6))
    assert dicom.min() == 0 and dicom.max() == 255


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = _ramp12()
    normal = decode_image(write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12), 10**6)
    inverted = decode_image(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", bits_stored=12), 10**6)
    assert np.array_equal(inverted, 255 - normal)


def test_the_window_in_the_file_maps_onto_0_255(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000, 1500, 2000, 2047, 2048, 2049, 3100, 4095]], dtype=np.uint16)
    out = decode_image(write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, WindowCenter=2048,
                                   WindowWidth=2048), 10**6)
    # Window 1024..3072: below is black, above is white, the centre mid-grey (PS3.3 C.11.2.1.2.1).
    assert out[0, 0] == out[0, 1] == 0 and out[0, -1] == out[0, -2] == 255
    assert 126 <= out[0, 5] <= 129 and list(out[0]) == sorted(out[0])
    # With the rescale (modality LUT) in front: stored value * 2 - 1000 is what the window applies to.
    rescaled = decode_image(write_dicom(tmp_path / "r.dcm", (pixels // 2 + 500).astype(np.uint16), bits_stored=12,
                                        RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2048,
                                        WindowWidth=2048), 10**6)
    assert np.abs(rescaled.astype(int) - out.astype(int)).max() <= 1


def test_8_bit_gray_and_rgb_decode_exactly_as_their_png_exports(tmp_path: Path) -> None:
    gray = synthetic_image(2, seed=3, size=48)
    assert np.array_equal(load_image(write_dicom(tmp_path / "g.dcm", gray), 32),
                          (Image.fromarray(gray).save(tmp_path / "g.png"), load_image(tmp_path / "g.png", 32))[1])
    rgb = np.dstack([gray, np.roll(gray, 5, axis=0), 255 - gray]).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    from_dicom = decode_image(write_dicom(tmp_path / "c.dcm", rgb, "RGB"), 10**6)
    assert np.abs(from_dicom.astype(int) - decode_image(tmp_path / "c.png", 10**6).astype(int)).max() <= 1


@pytest.mark.parametrize("make, message, kind", [
    (lambda p: p.write_bytes(b"\0" * 300), "not a DICOM file", "unreadable"),
    (lambda p: write_dicom(p, np.zeros((2, 10, 10), np.uint8), NumberOfFrames=2), "DICOM with 2 frames", "unreadable"),
    (lambda p: write_dicom(p, np.zeros((100, 100), np.uint8)), "exceeds the limit of 5000", "too_large"),
])
def test_bad_dicom_files_are_named_with_the_reason(tmp_path: Path, make, message: str, kind: str) -> None:
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(ImageError, match=message) as info:
        decode_image(path, 5000)
    assert info.value.kind == kind and str(path) in str(info.value)


def test_truncated_and_imageless_and_undecodable_dicom(tmp_path: Path, caplog) -> None:
    full = write_dicom(tmp_path / "full.dcm", _ramp12(), bits_stored=12).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(full[:len(full) - 1500])
    with pytest.raises(ImageError, match="cut.dcm: cannot decode the pixel data"):
        decode_image(tmp_path / "cut.dcm", 10**6)
    report = write_dicom(tmp_path / "sr.dcm", np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(report)
    del ds.Rows, ds.Columns, ds.PixelData
    ds.save_as(report)
    with pytest.raises(ImageError, match="DICOM object without an image"):
        decode_image(report, 10**6)
    # JPEG 2000 without a decoder plugin (or garbage inside): the message names the syntax and the way out.
    j2k = write_dicom(tmp_path / "j2k.dcm", np.zeros((8, 8), np.uint16), bits_stored=12)
    ds = pydicom.dcmread(j2k)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(j2k)
    with caplog.at_level("DEBUG"), pytest.raises(ImageError,
                                                 match="JPEG 2000 Image Compression \\(Lossless Only\\).*pylibjpeg"):
        decode_image(j2k, 10**6)
    # The reason is in the ImageError (a reported skip); pydicom's per-plugin tracebacks would only repeat it.
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.exc_info]


def test_extensionless_dicom_is_found_by_validation_caching_and_scoring(tmp_path: Path) -> None:
    """PACS exports often have no extension: the DICOM marker decides; other extensionless files stay out.
    Patient ids come from the PatientID element, which file names (1.2.840...-like UIDs) do not carry."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for label_index, label in enumerate(("normal", "benign", "cancer")):
            for n in range(3):
                pixels = synthetic_image(label_index, seed=label_index * 10 + n + (split == "val") * 100, size=40)
                name = f"IMG{label_index}{n}{split[0]}"
                write_dicom(root / split / label / (name if n == 0 else name + ".dcm"),
                            (pixels.astype(np.uint16) * 16), bits_stored=12, patient=f"ANON{label_index}{n}{split}")
    (root / "train" / "normal" / "README").write_text("not an image")
    assert is_supported_image(root / "train" / "normal" / "IMG00t")
    assert not is_supported_image(root / "train" / "normal" / "README")
    cfg = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}"])
    report = validate_dataset(root, cfg, tmp_path / "report")
    assert report.ok and report.stats["n_usable"] == 18
    assert [f.paths for f in report.warnings if f.check == "not_an_image"] == [["train/normal/README"]]
    assert report.stats["patients"]["id_sources"] == {"dicom": 18}
    markdown = (tmp_path / "report" / "validation.md").read_text()
    assert "DICOM MONOCHROME2 12-bit" in markdown and "18 images from the DICOM PatientID element" in markdown
    data = load_cache(build_cache(root, cfg))
    assert data.splits["train"].images.shape == (9, 32, 32) and not data.skipped
    assert sorted(data.splits["val"].patients) == sorted(f"ANON{c}{n}val" for c in range(3) for n in range(3))
    images, errors = list_input_files(root / "val")
    assert len(images) == 9 and errors == []

    # One patient under two file names in train and val: found through the header, not the names.
    write_dicom(root / "val" / "benign" / "OTHER.dcm", np.full((40, 40), 9, np.uint16), bits_stored=12,
                patient="ANON10train")
    leaks = [f for f in validate_dataset(root, cfg, tmp_path / "r2").warnings if f.check == "patient_leakage"]
    assert len(leaks) == 1 and "ANON10train (train 1, val 1)" in leaks[0].message
    by_name = load_config(None, ["data.image_size=32", "data.patient_id_source=file_name"])
    report = validate_dataset(root, by_name, tmp_path / "r3")  # the header ignored: every file its own patient
    assert report.stats["patients"]["id_sources"] == {"file_stem": 19}
    assert not [f for f in report.warnings if f.check == "patient_leakage"]
