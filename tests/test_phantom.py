"""Phantoms: known CTR, labels that agree with it, deterministic output."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from cardiomegaly import synthesize
from cardiomegaly.data.phantom import CTR_RANGE


def test_labels_agree_with_ctr_and_boxes_fit(tmp_path):
    csv = synthesize(tmp_path / "p", n=16, size=96, seed=0, progress=False)
    table = pd.read_csv(csv)
    assert len(table) == 16
    assert (table["label"] == (table["ctr"] > 0.5).astype(int)).all()
    assert table["ctr"].between(CTR_RANGE[0] - 0.03, CTR_RANGE[1] + 0.03).all()
    assert table["patient"].nunique() < 16  # follow-up films: patient-wise splits matter
    assert set(table["view"]) <= {"PA", "AP"}
    for row in table.itertuples():
        image = np.asarray(Image.open(tmp_path / "p" / row.image))
        assert image.shape == (96, 96)
        assert row.box_x >= 0 and row.box_x + row.box_w <= 96
        assert row.box_y >= 0 and row.box_y + row.box_h <= 96
    assert (tmp_path / "p" / "contact_sheet.png").is_file()


def test_box_width_follows_ctr(tmp_path):
    table = pd.read_csv(synthesize(tmp_path / "p", n=40, size=128, seed=1, progress=False))
    # The heart box is the cardiac silhouette: its width tracks the CTR (same patient scale).
    assert np.corrcoef(table["ctr"], table["box_w"])[0, 1] > 0.6


def test_heart_is_brighter_than_the_lungs_beside_it(tmp_path):
    table = pd.read_csv(synthesize(tmp_path / "p", n=6, size=128, seed=2, progress=False))
    for row in table.itertuples():
        image = np.asarray(Image.open(tmp_path / "p" / row.image), dtype=float)
        cy = int(row.box_y + row.box_h * 0.4)
        heart = image[cy, int(row.box_x + row.box_w * 0.5)]
        lung = image[cy, max(0, int(row.box_x - row.box_w * 0.35))]
        assert heart > lung + 10


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = synthesize(tmp_path / "a", n=4, size=80, seed=5, progress=False)
    b = synthesize(tmp_path / "b", n=4, size=80, seed=5, progress=False)
    c = synthesize(tmp_path / "c", n=4, size=80, seed=6, progress=False)
    assert a.read_text() == b.read_text() != c.read_text()
    for name in pd.read_csv(a)["image"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
