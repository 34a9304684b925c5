"""`cardiomegaly predict` end to end on a CPU: films per second and peak memory of classifiers,
for instance one that cuts films to the thorax against one that sees them whole (a benchmark,
not a test). Each model and backend runs in a fresh process, so each peak (VmHWM) is its own.

    python benchmarks/predict_speed.py ../shared/data/nih-cxr-cardiomegaly/images MODEL...
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
paths = find_images([sys.argv[2]])
clf = Classifier.load(sys.argv[1], device="cpu", backend=sys.argv[3])
start = time.perf_counter()
n = sum(1 for p in clf.predict_many(paths, batch_size=16) if p.error is None)
seconds = time.perf_counter() - start
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(n, seconds, int(peak) / 2**20, clf.backend, clf.crop is not None)
"""


def _with_export(model: Path, tmp: Path) -> Path:
    """The model, with its ONNX export beside it (made in a copy when it has none)."""
    if model.with_suffix(".onnx").is_file():
        return model
    from cardiomegaly.export import export

    copy = tmp / model.parent.name / "model.safetensors"
    copy.parent.mkdir(parents=True)
    shutil.copy(model, copy)
    export(copy, "onnx")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("films")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print("| model | cut to the thorax | backend | films | seconds | films/s | peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for given in args.models:
            model = _with_export(Path(given), Path(tmp))
            for backend in ("auto", "torch"):
                start = time.perf_counter()
                argv = [sys.executable, "-c", CODE, str(model), args.films, backend]
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                n, seconds, peak, used, cut = done.stdout.split()
                print(f"| {given} | {cut == 'True'} | {used} | {n} | {float(seconds):.1f} | "
                      f"{int(n) / float(seconds):.1f} | {float(peak):.2f} |  (process "
                      f"{time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
