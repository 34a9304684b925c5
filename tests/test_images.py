"""Image loading: every supported encoding decodes to the same picture; bad files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from cardiomegaly import ImageError, load_image
from makers import (
    IDENTIFIERS,
    gradient,
    write_dicom,
    write_jpeg,
    write_png,
    write_png_header_only,
)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_png_modes_decode_to_the_same_grey_ramp(tmp_path, mode):
    arr, meta = load_image(write_png(tmp_path / "x.png", mode))
    assert arr.dtype == np.float32 and arr.shape == (40, 48)
    assert np.abs(arr - gradient()).max() < 2 / 255
    assert meta.format == "png"
    assert meta.bits == (16 if mode == "I;16" else 8)


def test_sixteen_bit_png_keeps_sixteen_bit_precision(tmp_path):
    arr, _ = load_image(write_png(tmp_path / "x.png", "I;16"))
    assert np.abs(arr - gradient()).max() < 1e-4


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_modes_decode_to_the_same_grey_ramp(tmp_path, mode):
    arr, meta = load_image(write_jpeg(tmp_path / "x.jpg", mode))
    assert meta.format == "jpeg"
    assert np.abs(arr - gradient()).mean() < 0.03


def test_jpeg_draft_mode_decodes_smaller_but_never_below_the_target(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", h=800, w=640)
    full, _ = load_image(path)
    small, _ = load_image(path, target_size=150)
    assert full.shape == (800, 640)
    assert small.shape == (200, 160)  # 1/4 scale: the smallest with the long side >= 150


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    dicom = write_dicom(tmp_path / "really_dicom.png")
    png = write_png(tmp_path / "really_png.dcm")
    assert load_image(dicom)[1].format == "dicom"
    assert load_image(png)[1].format == "png"


def test_dicom_monochrome2_and_monochrome1_display_the_same_way(tmp_path):
    ramp = (gradient(32, 40) * 4095).round()
    mono2, _ = load_image(write_dicom(tmp_path / "m2.dcm", ramp, bits=12))
    mono1, meta = load_image(
        write_dicom(tmp_path / "m1.dcm", 4095 - ramp, bits=12, photometric="MONOCHROME1")
    )
    assert meta.photometric == "MONOCHROME1"
    assert np.abs(mono2 - gradient(32, 40)).max() < 1e-3
    assert np.abs(mono1 - mono2).max() < 1e-3  # inverted back to "bone is bright"


def test_dicom_rescale_then_window(tmp_path):
    # Stored 0..1000, rescaled to -1000..1000; window centre 0 width 1000 keeps -500..500.
    stored = np.tile(np.linspace(0, 1000, 41), (16, 1)).round()
    arr, _ = load_image(
        write_dicom(tmp_path / "w.dcm", stored, slope=2.0, intercept=-1000, window=(0, 1000))
    )
    values = stored[0] * 2 - 1000
    expected = np.clip((values - (0 - 0.5)) / (1000 - 1) + 0.5, 0, 1)
    assert np.abs(arr[0] - expected).max() < 1e-5
    assert arr[0, 0] == 0.0 and arr[0, -1] == 1.0  # outside the window: clipped


def test_dicom_without_window_uses_its_own_range(tmp_path):
    stored = np.tile(np.linspace(100, 900, 41), (16, 1)).round()
    arr, _ = load_image(write_dicom(tmp_path / "n.dcm", stored, bits=12))
    assert arr.min() == 0.0 and arr.max() == 1.0


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpeg"])
def test_compressed_dicom_decodes_through_installed_handlers(tmp_path, syntax):
    bits = 8 if syntax == "jpeg" else 16
    arr, meta = load_image(write_dicom(tmp_path / f"{syntax}.dcm", bits=bits, syntax=syntax))
    assert meta.transfer_syntax != "1.2.840.10008.1.2.1"
    assert np.abs(arr - gradient(32, 40)).mean() < 0.02


def test_dicom_metadata_keeps_view_sex_and_capped_age_but_nothing_identifying(tmp_path):
    _, meta = load_image(write_dicom(tmp_path / "id.dcm", view="AP"))
    assert (meta.view, meta.sex, meta.age) == ("AP", "F", 67)
    text = repr(meta.to_dict())
    for secret in IDENTIFIERS.values():
        assert secret not in text


def test_dicom_without_preamble_is_still_read(tmp_path):
    arr, meta = load_image(write_dicom(tmp_path / "raw.dcm", preamble=False))
    assert meta.format == "dicom" and arr.shape == (32, 40)


# ------------------------------------------------------------------------------- bad images


def _fails(path, *words):
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message
    return message


def test_dicom_without_pixel_data_is_refused(tmp_path):
    _fails(write_dicom(tmp_path / "np.dcm", with_pixels=False), "no pixel data")


def test_multiframe_dicom_is_refused(tmp_path):
    _fails(write_dicom(tmp_path / "mf.dcm", frames=3), "multi-frame", "3 frames")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _fails(path, "empty")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _fails(path, "not a PNG, JPEG or DICOM")


def test_truncated_jpeg(tmp_path):
    path = write_jpeg(tmp_path / "t.jpg", h=200, w=200)
    path.write_bytes(path.read_bytes()[:400])
    _fails(path, "cannot decode JPEG")


def test_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    path = write_png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    _fails(path, "decompression bomb")


def test_missing_file(tmp_path):
    _fails(tmp_path / "nope.jpg", "not found")
