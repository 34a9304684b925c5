"""Fuzzing (``make fuzz``; not part of ``make test``): whatever bytes arrive, the image loader and
the label-table readers either answer or raise the documented error, never anything else.

The image loader may raise only :class:`ImageError`; the table readers only :class:`UserError`
(of which DataError and ConfigError are kinds). Each property runs 1,000 examples or more.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardiomegaly.data.images import load_image
from cardiomegaly.data.preprocess import prepare_file
from cardiomegaly.data.records import load_records
from cardiomegaly.errors import ImageError, UserError
from makers import write_dicom, write_jpeg, write_png, write_png_rgba16

pytestmark = pytest.mark.fuzz

EXAMPLES = settings(max_examples=1000, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def _seed_files() -> dict[str, bytes]:
    """Real, valid files of every kind we read: the starting points of the mutations."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = [
            write_png(folder / "grey.png"),
            write_png(folder / "grey16.png", "I;16"),
            write_png(folder / "rgb.png", "RGB"),
            write_png_rgba16(folder / "rgba16.png"),
            write_jpeg(folder / "grey.jpg"),
            write_jpeg(folder / "rgb.jpg", "RGB"),
            write_dicom(folder / "raw.dcm"),
            write_dicom(folder / "mono1.dcm", photometric="MONOCHROME1"),
            write_dicom(folder / "rle.dcm", syntax="rle"),
            write_dicom(folder / "jpeg.dcm", bits=8, syntax="jpeg"),
        ]
        return {path.name: path.read_bytes() for path in files}


SEEDS = _seed_files()


@st.composite
def mutated_files(draw) -> bytes:
    """A real file with some bytes overwritten, a slice cut out or inserted, or cut short."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["overwrite", "delete", "insert", "truncate"]))
        if kind == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[max(at, 1) :]
        if not data:
            data = bytearray(b"\0")
    return bytes(data)


def _decode(data: bytes) -> None:
    try:
        arr, _ = load_image(data, target_size=75)
    except ImageError:
        return
    assert arr.dtype == np.float32 and arr.ndim == 2
    assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
    stored = prepare_file(data, 75, "pad", name="fuzz")  # and on through preprocessing
    assert stored.shape == (75, 75)


@EXAMPLES
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_raise_image_error(data):
    _decode(data)


@EXAMPLES
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM"]),
       st.binary(max_size=2048))  # fmt: skip
def test_bytes_after_a_real_magic_number_decode_or_raise_image_error(magic, rest):
    _decode(magic + rest)


@EXAMPLES
@given(mutated_files())
def test_mutated_real_files_decode_or_raise_image_error(data):
    _decode(data)


# ------------------------------------------------------------------------------- label tables

_CELLS = st.one_of(
    st.sampled_from(["a.png", "b.png", "../x.png", "/etc/passwd", "", "1", "0", "-1", "yes",
                     "1.0", "nan", "p1", "Cardiomegaly", "No Finding", '"', ",", "\n"]),
    st.text(max_size=12),
)  # fmt: skip
_HEADERS = st.lists(
    st.sampled_from(["path", "label", "patient", "Image Index", "Finding Labels", "Patient ID",
                     "Path", "Cardiomegaly", "view", "sex", "age", "x"]),
    min_size=1, max_size=5,
)  # fmt: skip


@st.composite
def label_tables(draw) -> bytes:
    header = draw(_HEADERS)
    rows = draw(st.lists(st.lists(_CELLS, min_size=len(header), max_size=len(header)),
                         max_size=6))  # fmt: skip
    text = "\n".join(",".join(row) for row in [header, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


def _read(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_png(folder / "a.png")
        write_png(folder / "b.png")
        (folder / name).write_bytes(data)
        with contextlib.suppress(UserError):
            load_records(folder / name)


@settings(EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(label_tables())
def test_label_csvs_read_or_raise_user_error(data):
    _read("labels.csv", data)


@EXAMPLES
@given(st.binary(max_size=1024))
def test_any_bytes_as_a_csv_read_or_raise_user_error(data):
    _read("labels.csv", data)


@EXAMPLES
@given(st.one_of(st.binary(max_size=512), st.text(max_size=200).map(str.encode)))
def test_any_bytes_as_a_data_yaml_read_or_raise_user_error(data):
    _read("data.yaml", data)
