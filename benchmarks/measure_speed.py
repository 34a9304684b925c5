"""`cardiomegaly measure` end to end on a CPU: films per second and peak memory (a benchmark,
not a test). Runs the command in a fresh process per backend, so each peak (VmHWM) is its own.

    python benchmarks/measure_speed.py SEGMODEL ../shared/data/nih-cxr-cardiomegaly/images
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODE = """
import sys, time
from cardiomegaly.predict import find_images
from cardiomegaly.segment.measure import Measurer
paths = find_images([sys.argv[2]])
m = Measurer.load(sys.argv[1], device="cpu", backend=sys.argv[3])
start = time.perf_counter()
n = sum(1 for r in m.measure_many(paths, batch_size=8) if r.error is None)
seconds = time.perf_counter() - start
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(n, seconds, int(peak) / 2**20, m.backend)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("films")
    args = parser.parse_args()
    model = Path(args.model)
    onnx = model.with_suffix(".onnx")
    with tempfile.TemporaryDirectory() as tmp:
        if not onnx.is_file():  # measure's default on a CPU is the export beside the model
            copy = Path(tmp) / "model.safetensors"
            copy.write_bytes(model.read_bytes())
            from cardiomegaly.export import export

            export(copy, "onnx")
            model = copy
        machine = platform.processor() or platform.machine()
        print(f"machine: {machine}, python {sys.version.split()[0]}")
        print("| backend | films | seconds | films/s | peak RSS (GB) |\n|---|---|---|---|---|")
        for backend in ("onnx", "torch"):
            start = time.perf_counter()
            argv = [sys.executable, "-c", CODE, str(model), args.films, backend]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
            n, seconds, peak, used = int(out[0]), float(out[1]), float(out[2]), out[3]
            print(f"| {used} | {n} | {seconds:.1f} | {n / seconds:.1f} | {peak:.2f} |"
                  f"  (process {time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
