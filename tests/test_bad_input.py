"""The bad-input corpus: every case gets its documented outcome and no traceback reaches a user.

Outcomes: a batch job reports the bad record in its output and goes on (exit 0); a command
given nothing it can use prints one line naming what is wrong and where, and exits 2. The HTTP
cases (missing field, two files, empty body, huge header, ...) are in test_serve.py.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cardiomegaly.cli import main
from makers import BAD_IMAGES, one_line_error, write_png

READ_ANYWAY = {"rgba16.png", "no-preamble.dcm"}

IMAGE_REASONS = {
    "empty.png": "file is empty",
    "garbage.png": "not a PNG, JPEG or DICOM image",
    "text.jpg": "not a PNG, JPEG or DICOM image",
    "truncated.jpg": "cannot decode JPEG",
    "huffman.jpg": "cannot decode JPEG",
    "crc.png": "cannot decode PNG",
    "one-pixel.png": "1 x 1 pixels",
    "strip.png": "longer than 5:1",
    "bomb.png": "decompression bomb",
    "loop.png": "cannot read",
    "dangling.png": "file not found",
    "no-pixels.dcm": "no pixel data",
    "wrong-syntax.dcm": "cannot decode DICOM pixel data",
    "truncated.dcm": "cannot decode DICOM pixel data",
    "multiframe.dcm": "multi-frame",
}


def _status(argv: list[str]) -> int:
    """The exit status, whether argparse (SystemExit) or the command itself gave it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_batch_reports_each_bad_image_and_scores_the_rest(name, tiny_run, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "good.png")
    BAD_IMAGES[name](folder / name)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(tiny_run / "model.safetensors"), str(folder),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "Traceback" not in capsys.readouterr().err
    rows = pd.read_csv(out).set_index(pd.read_csv(out)["path"].map(lambda p: p.split("/")[-1]))
    assert rows.loc["good.png", "probability"] >= 0
    if name in READ_ANYWAY:
        assert rows.loc[name, "probability"] >= 0 and pd.isna(rows.loc[name, "error"])
    else:
        assert pd.isna(rows.loc[name, "probability"])
        assert IMAGE_REASONS[name] in rows.loc[name, "error"] and name in rows.loc[name, "error"]


def test_one_bad_image_alone_exits_2(tiny_run, tmp_path, capsys):
    BAD_IMAGES["strip.png"](tmp_path / "strip.png")
    code = main(["predict", str(tiny_run / "model.safetensors"), str(tmp_path / "strip.png"),
                 "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert code == 2
    one_line_error(capsys.readouterr().err, "no image could be read")


# ------------------------------------------------------------------------------- CSV and YAML


def _csv(tmp_path, text: str | bytes) -> str:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    path = tmp_path / "labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


TABLES = {
    "utf-16": ("path,label\na.png,1\nb.png,0\n".encode("utf-16"), 2, "UTF-8"),
    "latin-1": ("path,label\nä.png,1\nb.png,0\n".encode("latin-1"), 2, "UTF-8"),
    "empty file": (b"", 2, "empty"),
    "header only": ("path,label\n", 2, "no rows"),
    "duplicate rows": ("path,label\na.png,1\na.png,1\nb.png,0\n", 0, "duplicate row"),
    "path escaping the root": ("path,label\n../../etc/passwd,1\na.png,1\nb.png,0\n", 0,
                               "outside the data root"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TABLES))
def test_label_tables(case, tmp_path, capsys):
    text, status, words = TABLES[case]
    code = main(["data", _csv(tmp_path, text)])
    out, err = capsys.readouterr()
    assert code == status
    if status == 2:
        one_line_error(err, "labels.csv", words)
    else:
        assert words in out


def test_a_data_yaml_with_a_scalar_where_a_mapping_belongs_exits_2(tiny_phantoms, tmp_path,
                                                                    capsys):  # fmt: skip
    data = tmp_path / "data.yaml"
    data.write_text(f"format: synthetic\nroot: {tiny_phantoms}\ncolumns: 0.7\n")
    assert main(["data", str(data), "--no-check"]) == 2
    one_line_error(capsys.readouterr().err, "data.yaml", "columns: expected a mapping")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("epochs: [1, 2", "not a readable YAML"),
        ("", "is empty"),
        ("- a list\n", "YAML mapping"),
        ("epoch: 3\n", "did you mean 'epochs'"),
        ("split: 0.7\n", "split: expected a mapping"),  # a scalar where a mapping belongs
        ("threshold_rule: fixed:1.5\n", "not a probability"),
    ],
)
def test_config_yaml(text, words, tiny_phantoms, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(text)
    code = main(["train", "--data", str(tiny_phantoms), "--config", str(config),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    one_line_error(capsys.readouterr().err, "train.yaml", words)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- model files


def _rewrite(source, target, change) -> str:
    with safe_open(source, "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    save_file(tensors, target, change(metadata))
    return str(target)


def _edited(field, value):
    def change(metadata):
        meta = json.loads(metadata["cardiomegaly"])
        meta[field] = value
        return {**metadata, "cardiomegaly": json.dumps(meta)}

    return change


MODELS = {
    "random bytes": (lambda run, t: t.write_bytes(b"\x00\x01" * 500) and str(t), "safetensors"),
    "another project's safetensors": (
        lambda run, t: save_file({"w": torch.zeros(3)}, t) or str(t), "not a cardiomegaly"),
    "edited metadata": (lambda run, t: _rewrite(run / "model.safetensors", t,
                                                _edited("preprocessing", {"image_size": "big"})),
                        "metadata"),
    "newer format version": (lambda run, t: _rewrite(run / "model.safetensors", t,
                                                     _edited("format_version", 99)), "version"),
    "a pickle named .safetensors": (
        lambda run, t: torch.save({"w": torch.zeros(3)}, t) or str(t), "safetensors"),
    "missing": (lambda run, t: str(t), "not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MODELS))
def test_model_files_that_are_not_ours_are_refused(case, tiny_run, tmp_path, capsys):
    make, words = MODELS[case]
    model = make(tiny_run, tmp_path / "model.safetensors")
    write_png(tmp_path / "film.png")
    code = main(["predict", model, str(tmp_path / "film.png"), "--out", str(tmp_path / "p.csv")])
    assert code == 2
    one_line_error(capsys.readouterr().err, words)
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--epochs", "-3"], "epochs"),
        (["--image-size", "64"], "75"),
        (["--out", "FILE"], "give a new --out"),
        (["--out", "/proc/cardiomegaly-run"], "cannot write"),  # unwritable, even for root
        (["--batch-size", "0"], "batch"),
        (["--threshold-rule", "fixed:1.5"], "fixed:1.5 is not a probability"),  # before the run
        (["--threshold-rule", "fixed:half"], "fixed:half is not a probability"),
        (["--arch", "vgg16"], "invalid choice: 'vgg16'.*inception_v3"),
    ],
)
def test_training_arguments(extra, words, tiny_phantoms, tmp_path, capsys):
    (tmp_path / "FILE").write_text("the user's file\n")
    extra = [str(tmp_path / "FILE") if a == "FILE" else a for a in extra]
    assert _status(["train", "--data", str(tiny_phantoms), "--weights", "none", *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(words, err)
    assert (tmp_path / "FILE").read_text() == "the user's file\n"
