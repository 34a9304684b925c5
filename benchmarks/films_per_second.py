"""`cardiomegaly measure` and `predict` end to end on a CPU: films per second and peak memory (a
benchmark, not a test). A segment model is timed measuring, a classifier predicting (one that cuts
films to the thorax runs both networks; one with test-time views runs its own on nine views of
each film). Each model and backend runs in a fresh process, so each peak (VmHWM) is its own; a
model without an ONNX export beside it is exported in a copy first.

    python benchmarks/films_per_second.py ../shared/data/nih-cxr-cardiomegaly/images MODEL...
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODE = """
import sys, time
from cardiomegaly.predict import Classifier, find_images
from cardiomegaly.segment.measure import Measurer
model, films, backend, task = sys.argv[1:]
paths = find_images([films])
if task == "segment":
    m = Measurer.load(model, device="cpu", backend=backend)
    results = m.measure_many(paths, batch_size=8)
else:
    m = Classifier.load(model, device="cpu", backend=backend)
    results = m.predict_many(paths, batch_size=16)
start = time.perf_counter()
n = sum(1 for r in results if r.error is None)
seconds = time.perf_counter() - start
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(n, seconds, int(peak) / 2**20, m.backend, getattr(m, "crop", None) is not None)
"""


def _with_export(model: Path, tmp: Path) -> Path:
    """The model, with its ONNX export beside it (made in a copy when it has none)."""
    if model.with_suffix(".onnx").is_file():
        return model
    from cardiomegaly.export import export

    copy = tmp / str(len(list(tmp.iterdir()))) / "model.safetensors"
    copy.parent.mkdir(parents=True)
    shutil.copy(model, copy)
    export(copy, "onnx")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("films")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    from cardiomegaly.model import read_metadata

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print("| model | task | cut to the thorax | test-time views | backend | films | seconds | "
          "films/s | peak RSS (GB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for given in args.models:
            meta = read_metadata(given)
            task, views = meta["task"], bool(meta["preprocessing"].get("tta"))
            model = _with_export(Path(given), Path(tmp))
            for backend in ("onnx", "torch"):
                start = time.perf_counter()
                argv = [sys.executable, "-c", CODE, str(model), args.films, backend, task]
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                n, seconds, peak, used, cut = done.stdout.split()
                print(f"| {given} | {task} | {cut == 'True'} | {views} | {used} | {n} | "
                      f"{float(seconds):.1f} | {int(n) / float(seconds):.1f} | {float(peak):.2f} "
                      f"|  (process {time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
