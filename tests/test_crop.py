"""Films cut to the thorax: the square around the heart and lungs a segment model finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiomegaly.data.images import load_image
from cardiomegaly.errors import UserError
from cardiomegaly.segment.crop import ThoraxCrop, thorax_box
from cardiomegaly.segment.ctr import MASK_CLASSES


def _square_masks(size: int, rows: tuple[int, int], cols: tuple[int, int]) -> dict[str, np.ndarray]:
    """A heart and two lungs whose union fills rows and cols (first, last inclusive)."""
    masks = {name: np.zeros((size, size), bool) for name in MASK_CLASSES}
    middle = (cols[0] + cols[1]) // 2
    masks["right_lung"][rows[0] : rows[1] + 1, cols[0] : middle] = True
    masks["left_lung"][rows[0] : rows[1] + 1, middle + 1 : cols[1] + 1] = True
    masks["heart"][(rows[0] + rows[1]) // 2 : rows[1] + 1, middle - 2 : middle + 3] = True
    return masks


def test_the_box_is_the_square_around_the_organs_in_the_films_own_pixels():
    # a 100 px square film seen at 50 px: every mask pixel is 2 film pixels
    masks = _square_masks(50, rows=(10, 29), cols=(15, 34))
    assert thorax_box(masks, 100, 100, margin=0.0) == (30, 20, 70, 60)
    assert thorax_box(masks, 100, 100, margin=0.1) == (26, 16, 74, 64)


def test_the_box_follows_the_pad_and_squash_policies_of_a_film_that_is_not_square():
    # 200 x 100 padded into 100 px: scale 0.5, the film's rows start at 25
    masks = _square_masks(100, rows=(30, 69), cols=(20, 79))
    # organs at x 40-160, y 10-90: a 120 px square is taller than the film and is cut by it
    assert thorax_box(masks, 200, 100, "pad", margin=0.0) == (40, 0, 160, 100)
    # 100 x 200 squashed into 100 px: rows scale by 2, columns by 1: x 20-80, y 60-140
    assert thorax_box(masks, 100, 200, "squash", margin=0.0) == (10, 60, 90, 140)


def test_a_square_past_the_films_edge_moves_inside_it():
    masks = _square_masks(100, rows=(0, 39), cols=(0, 39))
    assert thorax_box(masks, 100, 100, margin=0.25) == (0, 0, 60, 60)
    masks = _square_masks(100, rows=(60, 99), cols=(60, 99))
    assert thorax_box(masks, 100, 100, margin=0.25) == (40, 40, 100, 100)


def test_masks_too_small_to_be_a_thorax_give_no_box():
    assert thorax_box(_square_masks(100, rows=(40, 44), cols=(40, 44)), 100, 100) is None
    empty = {name: np.zeros((100, 100), bool) for name in MASK_CLASSES}
    assert thorax_box(empty, 100, 100) is None


def test_a_segment_model_cuts_unseen_phantoms_where_their_true_masks_say(seg_run, seg_phantoms):
    crop = ThoraxCrop.load(seg_run / "model.safetensors")
    splits = pd.read_csv(seg_run / "splits.csv")
    unseen = splits.loc[splits["split"] == "test", "path"].head(4)
    films = [load_image(seg_phantoms / p)[0] for p in unseen]
    for path, film, box in zip(unseen, films, crop.boxes(films), strict=True):
        name = Path(path).name
        truth = {o: load_image(seg_phantoms / "masks" / o / name)[0] > 0.5 for o in MASK_CLASSES}
        expected = thorax_box(truth, film.shape[1], film.shape[0])
        assert box is not None and expected is not None
        assert np.abs(np.subtract(box, expected)).max() <= 4, (box, expected)
        left, top, right, bottom = box
        np.testing.assert_array_equal(crop(film), film[top:bottom, left:right])
    assert (right - left) < film.shape[1]  # the phantom's air around the chest is cut away


def test_a_film_where_the_model_finds_no_thorax_is_returned_whole(seg_run, monkeypatch):
    crop = ThoraxCrop.load(seg_run / "model.safetensors")
    monkeypatch.setattr(crop.measurer, "masks", lambda x: np.zeros((len(x), 3, *x.shape[1:]), bool))
    film = np.random.default_rng(0).random((80, 96), np.float32)
    assert crop.boxes([film]) == [None]
    assert crop(film) is film


def test_only_a_segment_model_can_cut_films(tiny_run):
    with pytest.raises(UserError, match="segment"):
        ThoraxCrop.load(tiny_run / "model.safetensors")
