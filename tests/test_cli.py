"""The command line: results printed, bad input gets one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cardiomegaly.cli import main
from makers import one_line_error, write_jpeg, write_png_header_only


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_then_data_reports_the_phantoms(tmp_path, capsys):
    code, out, _ = run(capsys, "synth", tmp_path / "p", "--n", 12, "--size", 96, "--seed", 1)
    assert code == 0 and "contact_sheet.png" in out
    table = pd.read_csv(tmp_path / "p" / "phantoms.csv")
    code, out, _ = run(capsys, "data", tmp_path / "p", "--splits", tmp_path / "splits.csv")
    assert code == 0
    assert f"images      {len(table)}" in out
    assert f"positives   {int(table['label'].sum())}" in out
    assert f"patients    {table['patient'].nunique()}" in out
    assert "unreadable  0" in out
    assert set(pd.read_csv(tmp_path / "splits.csv")["split"]) <= {"train", "val", "test"}


def test_synth_never_writes_into_a_folder_that_has_files(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "synth", tmp_path, "--n", 2, "--size", 80)
    assert code == 2
    one_line_error(err, str(tmp_path), "not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["synth", "OUT", "--n", "0"], ["--n", "at least 1"]),
        (["synth", "OUT", "--size", "64"], ["--size", "under 75"]),
        (["data"], ["required"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_bad_arguments_get_one_line_and_status_2(tmp_path, capsys, argv, words):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    one_line_error(capsys.readouterr().err, *words)


def test_data_folder_that_does_not_exist(tmp_path, capsys):
    code, _, err = run(capsys, "data", tmp_path / "absent")
    assert code == 2
    one_line_error(err, str(tmp_path / "absent"), "no such file or folder")


def test_data_without_positives_cannot_be_trained_on(tmp_path, capsys):
    for i in range(3):
        write_jpeg(tmp_path / "normal" / f"{i}.jpg")
    code, out, err = run(capsys, "data", tmp_path)
    assert code == 2
    assert "negatives   3" in out
    one_line_error(err, "cannot be trained on", "no positive")


def test_unreadable_files_are_listed_with_reasons_and_the_rest_counted(tmp_path, capsys):
    for i in range(3):
        write_jpeg(tmp_path / "cardiomegaly" / f"p{i}.jpg")
        write_jpeg(tmp_path / "normal" / f"n{i}.jpg")
    (tmp_path / "normal" / "zero.png").write_bytes(b"")
    (tmp_path / "normal" / "text.png").write_text("hello")
    truncated = write_jpeg(tmp_path / "normal" / "cut.jpg", h=300, w=300)
    truncated.write_bytes(truncated.read_bytes()[:500])
    write_png_header_only(tmp_path / "normal" / "bomb.png", 100_000, 100_000)
    code, out, _ = run(capsys, "data", tmp_path)
    assert code == 0
    assert "images      10" in out and "unreadable  4" in out
    assert "zero.png: file is empty" in out
    assert "text.png: not a PNG, JPEG or DICOM image" in out
    assert "cut.jpg: cannot decode JPEG" in out
    assert "bomb.png: image header claims" in out


def test_python_dash_m_and_console_script_both_run():
    for command in (
        [sys.executable, "-m", "cardiomegaly", "--help"],
        [str(Path(sys.executable).parent / "cardiomegaly"), "--version"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert "cardiomegaly" in result.stdout


def test_demo_runs_the_whole_flow_and_ends_with_the_paths_to_look_at(tmp_path, capsys):
    code, out, _ = run(capsys, "demo", "--out", tmp_path / "d", "--n", 40, "--size", 96,
                       "--epochs", 1, "--image-size", 75)  # fmt: skip
    assert code == 0
    ending = out.split("Look at:")[1]
    shown = {line.split()[0]: Path(line.split()[-1]) for line in ending.strip().splitlines()}
    assert set(shown) == {"report", "curves", "overlays", "contact", "predictions"}
    for path in shown.values():
        assert path.exists(), path
    assert len(list(shown["overlays"].glob("*.png"))) == 3
    predictions = pd.read_csv(shown["predictions"])
    assert len(predictions) == 3 and predictions["probability"].notna().all()
    assert "$ cardiomegaly train --preset demo" in out  # each step shows its command
