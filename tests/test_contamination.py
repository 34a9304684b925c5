"""The contamination guard: a model file fingerprints every film it was trained or tuned on (by
its pixels, never its name), and evaluation says how many of the films it scores the model has
seen, and warns."""

from __future__ import annotations

import json
import shutil

import pandas as pd

from cardiomegaly import evaluate
from cardiomegaly.cli import main
from cardiomegaly.data.cache import ImageCache
from cardiomegaly.model import read_metadata


def _seen(run):
    return set(read_metadata(run / "model.safetensors")["seen"]["films"])


def test_the_model_file_fingerprints_its_training_and_validation_films(tiny_run, tiny_phantoms):
    meta = read_metadata(tiny_run / "model.safetensors")
    splits = pd.read_csv(tiny_run / "splits.csv")
    learnt = splits[splits["split"] != "test"]
    assert meta["seen"]["count"] == len(learnt)
    text = json.dumps(meta)
    assert all(name not in text for name in learnt["path"])  # fingerprints, not names
    cache = ImageCache(meta["preprocessing"]["image_size"], meta["preprocessing"]["resize"])
    test_films = splits.loc[splits["split"] == "test", "path"]
    assert not set(cache.fingerprints(tiny_phantoms / p for p in test_films)) & _seen(tiny_run)


def test_its_own_test_split_is_unseen(tiny_run, tiny_phantoms, tmp_path):
    result = evaluate(tiny_run / "model.safetensors", tiny_phantoms, out=tmp_path / "e")
    assert result.metrics["seen_by_model"] == 0
    assert not any("trained or tuned on" in w for w in result.metrics["warnings"])


def test_a_renamed_copy_of_a_training_film_is_caught(tiny_run, tiny_phantoms, tmp_path, capsys):
    splits = pd.read_csv(tiny_run / "splits.csv")
    train_films = splits.loc[splits["split"] == "train", "path"].head(2)
    test_films = splits.loc[splits["split"] == "test", "path"].head(2)
    folder = tmp_path / "other-hospital"
    (folder / "cardiomegaly").mkdir(parents=True)
    (folder / "normal").mkdir()
    for i, name in enumerate([*train_films, *test_films]):
        shutil.copy(tiny_phantoms / name, folder / ("cardiomegaly", "normal")[i % 2] / f"x{i}.png")
    code = main(["evaluate", str(tiny_run / "model.safetensors"), "--data", str(folder),
                 "--split", "all", "--out", str(tmp_path / "e")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "trained or tuned on 2 of these 4 films" in out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["seen_by_model"] == 2
    assert "trained or tuned on 2" in (tmp_path / "e" / "report.html").read_text()


def test_a_model_file_without_fingerprints_says_it_cannot_tell(tiny_run, tiny_phantoms, tmp_path):
    from safetensors.torch import load_file, save_file

    meta = read_metadata(tiny_run / "model.safetensors")
    del meta["seen"]
    old = tmp_path / "model.safetensors"
    save_file(load_file(tiny_run / "model.safetensors"), old,
              metadata={"cardiomegaly": json.dumps(meta)})  # fmt: skip
    result = evaluate(old, tiny_phantoms, split="all", out=tmp_path / "e")
    assert result.metrics["seen_by_model"] is None
    assert any("cannot be checked" in w for w in result.metrics["warnings"])


def test_the_ensemble_has_seen_every_film_of_its_data(cv_run, tiny_phantoms, tmp_path):
    assert len(_seen(cv_run)) == 30
    result = evaluate(cv_run / "model.safetensors", tiny_phantoms, split="all", out=tmp_path / "e")
    assert result.metrics["seen_by_model"] == 30
