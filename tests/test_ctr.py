"""The cardiothoracic ratio from masks: exact widths, clean-up, and flags instead of numbers."""

from __future__ import annotations

import numpy as np
import pytest

from cardiomegaly.segment.ctr import clean_mask, measure_ctr
from makers import chest_masks


def test_the_ratio_of_known_widths_is_exact_and_keeps_its_endpoints():
    m = measure_ctr(chest_masks(heart=(30, 50), lungs=((8, 36), (44, 72))))
    assert (m.heart_width_px, m.thorax_width_px) == (21, 65)
    assert m.ctr == pytest.approx(21 / 65, abs=0) and m.quality == "ok"
    assert m.heart.left[0] == 30 and m.heart.right[0] == 50
    assert m.thorax.left[0] == 8 and m.thorax.right[0] == 72
    row = m.to_dict()
    assert row["ctr_over_0_5"] == 0 and row["ctr"] == round(21 / 65, 4)


def test_the_heart_borders_may_lie_at_different_heights():
    masks = chest_masks(heart=(30, 40))
    masks["heart"][44:50, 40:56] = True  # the left ventricle bulges lower down
    m = measure_ctr(masks)
    assert m.heart_width_px == 55 - 30 + 1  # columns 30 to 55
    assert m.heart.left[1] < m.heart.right[1]  # endpoints at their own heights


def test_specks_are_dropped_and_holes_filled_before_measuring():
    masks = chest_masks(heart=(30, 50))
    masks["heart"][5, 2] = True  # a speck far out would widen the heart to column 2
    masks["heart"][38:42, 38:42] = False  # a hole
    masks["right_lung"][60, 0] = True  # and one that would widen the thorax
    m = measure_ctr(masks)
    assert (m.heart_width_px, m.thorax_width_px) == (21, 65)
    cleaned = clean_mask(masks["heart"])
    assert cleaned[38:42, 38:42].all() and not cleaned[5, 2]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m["left_lung"].fill(False), "left lung missing"),
        (lambda m: m["heart"].fill(False), "heart missing"),
        (lambda m: m["right_lung"].fill(False), "right lung missing"),
        (lambda m: m["heart"].__setitem__(np.s_[30:50, 2:79], True), "outside the lungs' span"),
    ],
)
def test_implausible_geometry_is_flagged_with_the_reason_not_a_number(change, reason):
    masks = chest_masks()
    change(masks)
    m = measure_ctr(masks)
    assert m.ctr is None and m.quality.startswith("flagged") and reason in m.quality


def test_a_heart_whose_widest_row_lies_below_the_lungs_is_flagged_but_not_one_reaching_lower():
    low = chest_masks(heart_rows=(30, 62))  # lungs span rows 10-55
    low["heart"][58:62, 26:54] = True  # widest on rows 58-61, below the lungs
    m = measure_ctr(low)
    assert m.ctr is None and "heart's diameter lies outside the lungs' height" in m.quality
    reaching = chest_masks(heart_rows=(30, 62))  # runs below, but widest beside the lungs
    reaching["heart"][40:44, 26:54] = True
    assert measure_ctr(reaching).quality == "ok"


def test_a_ratio_no_chest_has_is_flagged():
    narrow = measure_ctr(chest_masks(heart=(39, 41)), min_area=0.0)  # 3 of 65 px: 0.05
    assert narrow.ctr is None and "outside 0.25-0.85" in narrow.quality
    wide = measure_ctr(chest_masks(heart=(9, 71)))  # 63 of 65 px: 0.97
    assert wide.ctr is None and "ratio 0.97" in wide.quality


def test_a_tiny_lung_is_flagged():
    masks = chest_masks()
    masks["left_lung"][:] = False
    masks["left_lung"][20:22, 60:62] = True
    m = measure_ctr(masks)
    assert m.ctr is None and "left lung missing or tiny" in m.quality
