"""The README's commands run as written: every `cardiomegaly` line parses, and the short ones run
on tiny data in a scratch folder (DATA and MODEL stand for the tiny run's data and model file)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from cardiomegaly.cli import build_parser, main
from makers import write_dicom, write_png

README = Path(__file__).resolve().parents[1] / "README.md"
# Long-running or never-ending commands: parsed here, run by the demo, training tests and CI.
SLOW = {"train", "serve", "demo", "listen"}


def _commands() -> list[str]:
    """Every command line in the README's bash blocks that runs cardiomegaly."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    lines = [line.strip() for block in blocks  # a line ending in \ goes on below
             for line in block.replace("\\\n", " ").splitlines()]  # fmt: skip
    return [line for line in lines if re.match(r"(cardiomegaly|python -m cardiomegaly|torchrun)\b",
                                               line)]  # fmt: skip


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    if words[0] == "torchrun":
        words = words[words.index("-m") + 1 :]
    elif words[0] == "python":
        words = words[2:]
    assert words[0] == "cardiomegaly", line
    return words[1:]


COMMANDS = _commands()


def test_the_readme_has_commands_for_every_step():
    steps = {_argv(line)[0] for line in COMMANDS if _argv(line)[0] != "--help"}
    assert steps >= {"synth", "data", "train", "evaluate", "predict", "explain", "export", "serve"}


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_parses(line):
    try:
        build_parser().parse_args(_argv(line))
    except SystemExit as exc:  # --help exits 0; anything else is a stale flag
        assert exc.code == 0, line


def test_the_short_readme_commands_run_as_written(small_run, seg_run, tiny_phantoms, tmp_path,
                                                  monkeypatch):  # fmt: skip
    """MODEL is a U-Net encoder run (InceptionV3's three exports here took 14 s), and synth
    makes 20 films, not 200 (12 s): the same code runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARDIOMEGALY_CACHE", str(tmp_path / "cache"))
    shutil.copytree(small_run, tmp_path / "runs" / "train" / "exp")
    shutil.copytree(small_run, tmp_path / "runs" / "train" / "exp2")  # the one to compare with
    model = "runs/train/exp/model.safetensors"
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "films" / name)
    write_png(tmp_path / "more" / "c.png")
    write_dicom(tmp_path / "film.dcm")
    write_dicom(tmp_path / "extra.dcm")
    ran = []
    for line in COMMANDS:
        values = {"DATA": str(tiny_phantoms), "MODEL": model,
                  "SEGMODEL": str(seg_run / "model.safetensors")}  # fmt: skip
        argv = [values.get(w, w) for w in _argv(line)]
        if argv[0] == "synth" and "--n" in argv:
            argv[argv.index("--n") + 1] = "20"
        if argv[0] in SLOW or "--help" in argv or line.startswith("torchrun"):
            continue
        if any("../shared" in word for word in argv):
            continue  # the NIH sample: not on a user's machine
        assert main(argv) == 0, line
        ran.append(argv[0])
    assert {"synth", "data", "evaluate", "predict", "explain", "export", "measure"} <= set(ran)
