"""The preprocessing cache decodes each file once per size and policy, and notices changes."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import cardiomegaly.data.preprocess as decoder_module
from cardiomegaly import ImageCache, ImageError, box_to_square, to_square
from cardiomegaly.data.preprocess import square_to_box
from makers import write_jpeg, write_png


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts calls of the decoder behind the cache."""
    calls = []
    real = decoder_module.load_image

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(decoder_module, "load_image", counting)
    return calls


def test_second_pass_reads_the_cache_not_the_original(tmp_path, decode_counter):
    paths = [write_jpeg(tmp_path / f"{i}.jpg", h=120, w=100) for i in range(4)]
    cache = ImageCache(80, root=tmp_path / "cache")
    first = [cache.get(p) for p in paths]
    assert len(decode_counter) == 4
    second = [ImageCache(80, root=tmp_path / "cache").get(p) for p in paths]
    assert len(decode_counter) == 4
    for a, b in zip(first, second, strict=True):
        assert a.shape == (80, 80) and a.dtype == np.float32
        assert np.array_equal(a, b)


def test_a_changed_file_is_decoded_again(tmp_path, decode_counter):
    path = write_png(tmp_path / "x.png")
    cache = ImageCache(75, root=tmp_path / "cache")
    before = cache.get(path)
    write_png(tmp_path / "x.png", h=48, w=40)  # other content, other size
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = cache.get(path)
    assert len(decode_counter) == 2
    assert not np.array_equal(before, after)


def test_a_read_interrupted_by_another_read_still_hits_the_cache(tmp_path, decode_counter):
    # A garbage collection that starts inside a read and reads another entry (as a finalizer or
    # a second thread can) upsets CPython 3.11's count of AST depth that NumPy's header parsing
    # uses: the read must still return the stored image, not raise SystemError or decode again.
    paths = [write_png(tmp_path / f"{i}.png") for i in range(2)]
    cache = ImageCache(40, root=tmp_path / "cache")
    expected = [cache.get(p) for p in paths]
    inside = []

    def read_during_collection(phase, info):
        if phase == "start" and not inside:
            inside.append(True)
            try:
                cache.get(paths[1])
            finally:
                inside.pop()

    threshold = gc.get_threshold()
    gc.callbacks.append(read_during_collection)
    gc.set_threshold(1)
    try:
        again = [cache.get(paths[0]) for _ in range(20)]
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(read_during_collection)
    assert all(np.array_equal(a, expected[0]) for a in again)
    assert len(decode_counter) == 2  # the first two reads only


def test_other_size_or_policy_is_another_entry(tmp_path, decode_counter):
    path = write_png(tmp_path / "x.png")
    ImageCache(75, root=tmp_path / "c").get(path)
    ImageCache(76, root=tmp_path / "c").get(path)
    ImageCache(75, "squash", root=tmp_path / "c").get(path)
    assert len(decode_counter) == 3


def test_sixteen_bit_sources_keep_sixteen_bits_in_the_cache(tmp_path):
    path = write_png(tmp_path / "x.png", "I;16", h=75, w=75)
    cache = ImageCache(75, "squash", root=tmp_path / "c")
    cache.get(path)
    (entry,) = list((tmp_path / "c").rglob("*.npy"))
    assert np.load(entry).dtype == np.uint16


def test_warm_reports_bad_files_and_goes_on(tmp_path):
    good = [write_jpeg(tmp_path / f"{i}.jpg") for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    failures = ImageCache(75, root=tmp_path / "c").warm([*good, bad], progress=False)
    assert failures == [(str(bad), f"{bad}: not a PNG, JPEG or DICOM image")]
    with pytest.raises(ImageError):
        ImageCache(75, root=tmp_path / "c").get(tmp_path / "absent.png")


def test_pad_keeps_the_aspect_ratio_and_boxes_follow():
    wide = np.ones((50, 100), np.float32)
    out = to_square(wide, 100, "pad")
    assert out[:25].max() == 0 and out[75:].max() == 0 and out[25:75].min() > 0.99
    assert box_to_square((0, 0, 100, 50), 100, 50, 100, "pad") == (0.0, 25.0, 100.0, 50.0)
    assert to_square(wide, 100, "squash").min() > 0.99
    for resize in ("pad", "squash"):  # and back from the model input to the film
        placed = box_to_square((10, 5, 30, 20), 100, 50, 64, resize)
        assert square_to_box(placed, 100, 50, 64, resize) == pytest.approx((10, 5, 30, 20))
