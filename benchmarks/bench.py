"""Speed benchmarks (not tests): model inference against the fp32 roofline, and predict end to end.

    make bench                      # writes benchmarks/RESULTS.md
    python benchmarks/bench.py --data ../shared/data/nih-cxr-cardiomegaly --out RESULTS.md

Every figure is the median and range of 5 timed repetitions after warm-up, in images/s and as a
fraction of the fp32 roofline: FLOPs per image (counted by torch's FlopCounterMode) against
cores x FLOP/cycle x clock. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cardiomegaly.data.phantom import sample_films
from cardiomegaly.model import build_model, preprocessing_for, save_model

REPS = 5


def _cpu() -> tuple[str, int, float, int]:
    """CPU name, cores we may use, clock (GHz) and fp32 FLOP per cycle per core."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.processor())  # fmt: skip
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    per_cycle = 64 if " avx512f" in flags else 32 if " fma" in flags else 16  # 2 FMA units
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return name, int(cores or 1), (max(mhz) / 1000 if mhz else float("nan")), per_cycle


def _flops(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    return float(counter.get_total_flops())


def _time(run, batch: np.ndarray) -> list[float]:
    for _ in range(2):
        run(batch)
    rates = []
    for _ in range(REPS):
        start = time.perf_counter()
        run(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return rates


def _row(name: str, batch: int, rates: list[float], flops: float, peak: float) -> str:
    median = statistics.median(rates)
    return (f"| {name} | {batch} | {median:.1f} | {min(rates):.1f} to {max(rates):.1f} | "
            f"{median * flops / peak:.0%} |")  # fmt: skip


def inference_rows(size: int, flops: float, peak: float, workdir: Path) -> list[str]:
    import onnxruntime as ort

    from cardiomegaly.export import export

    model = build_model("inception_v3").eval()
    films = sample_films(16, size, seed=1).astype(np.float32)[:, None] / 255
    rows = []
    channels_last = build_model("inception_v3").eval().to(memory_format=torch.channels_last)
    channels_last.load_state_dict(model.state_dict())

    def torch_run(net, fmt):
        def run(batch):
            with torch.inference_mode():
                net(torch.from_numpy(batch).contiguous(memory_format=fmt))

        return run

    path = workdir / "model.safetensors"
    meta = {"preprocessing": preprocessing_for("inception_v3", size, "pad"),
            "threshold": {"value": 0.5, "rule": "youden", "chosen_on": "none"}}  # fmt: skip
    save_model(path, model, meta)
    onnx_path = export(path, "onnx", workdir / "model.onnx").path
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    int8_session = _int8_session(onnx_path, films, workdir)
    engines = [
        ("PyTorch, default layout", torch_run(model, torch.contiguous_format)),
        ("PyTorch, channels_last", torch_run(channels_last, torch.channels_last)),
        ("ONNX Runtime fp32", lambda b: session.run(None, {"image": b})),
        ("ONNX Runtime int8 (static QDQ)", lambda b: int8_session.run(None, {"image": b})),
    ]
    for name, run in engines:
        for batch in (1, 16):
            rows.append(_row(name, batch, _time(run, films[:batch]), flops, peak))
            print(rows[-1], flush=True)
    return rows


def _int8_session(onnx_path: Path, films: np.ndarray, workdir: Path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([films[i : i + 4] for i in range(0, len(films), 4)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    prepared, quantized = workdir / "prepared.onnx", workdir / "int8.onnx"
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)  # fmt: skip
    return ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])


def training_rows(size: int, flops: float, peak: float) -> list[str]:
    """Training steps (forward, backward, AdamW) on phantom films: the full network and the top
    blocks only (Mixed_6*, Mixed_7*: stage 2 of transfer learning), channels_last, fp32."""
    films = torch.from_numpy(sample_films(32, size, seed=2)).float().div(255)[:, None]
    labels = (torch.arange(32) % 2).float()
    rows = []
    for name, blocks in (("full network", "all"), ("top blocks only", ("Mixed_6", "Mixed_7"))):
        model = build_model("inception_v3").to(memory_format=torch.channels_last)
        model.set_trainable(blocks)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def step(batch, model=model, optimizer=optimizer, loss_fn=loss_fn):
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), labels[: len(x)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for batch in (16, 32):
            rates = _time(step, films[:batch].numpy())
            row = _row(f"training, {name}", batch, rates, 3 * flops, peak)
            if blocks != "all":  # the backward pass stops at the top blocks: no 3x count
                row = row.rsplit("|", 2)[0] + "| n/a |"
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


# The child's own high-water mark: ru_maxrss would include the parent's, inherited at fork.
_HWM = ("print(next(int(line.split()[1]) for line in open('/proc/self/status') "
        "if line.startswith('VmHWM')))")  # fmt: skip


def memory_rows(data: Path | None, workdir: Path) -> list[str]:
    """Peak resident memory of predict (batch 16) and of training steps (batch 32), each in a
    fresh process so that nothing else counts."""
    import subprocess

    rows = []
    if data is not None and (data / "images").is_dir():
        code = ("from cardiomegaly.predict import Classifier, find_images; "
                f"c = Classifier.load({str(workdir / 'model.safetensors')!r}, device='cpu'); "
                f"list(c.predict_many(find_images([{str(data / 'images')!r}]), batch_size=16)); "
                f"{_HWM}")  # fmt: skip
        kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split()[-1])  # fmt: skip
        rows.append(f"| peak RSS, predict on the NIH sample (batch 16) | 16 | {kb / 2**20:.2f} GB "
                    "| one run | |")  # fmt: skip
    code = ("import torch; from cardiomegaly.model import build_model; "
            "m = build_model('inception_v3').train(); o = torch.optim.AdamW(m.parameters()); "
            "x = torch.rand(32, 1, 299, 299)\n"
            "for _ in range(2):\n"
            "    o.zero_grad(); m(x).sum().backward(); o.step()\n"
            f"{_HWM}")  # fmt: skip
    kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()[-1])  # fmt: skip
    rows.append(f"| peak RSS, training the full network (batch 32) | 32 | {kb / 2**20:.2f} GB "
                "| one run | |")  # fmt: skip
    return rows


def predict_rows(data: Path, size: int, flops: float, peak: float, workdir: Path) -> list[str]:
    """`predict` on the real images: decode + preprocessing + model, and the model alone."""
    from cardiomegaly.predict import Classifier, find_images

    paths = find_images([data / "images"])
    clf = Classifier.load(workdir / "model.safetensors", device="cpu")
    clf.predict_many(paths[:32], batch_size=16)  # warm-up
    start = time.perf_counter()
    predictions = list(clf.predict_many(paths, batch_size=16))
    wall = time.perf_counter() - start
    images = np.stack([clf.preprocess(p) for p in paths[:64]])
    model_rates = _time(lambda b: clf.probabilities(b), images[:16])
    end_to_end = len(predictions) / wall
    model_only = statistics.median(model_rates)
    return [
        f"| predict end to end, PyTorch ({len(paths)} NIH JPEGs, batch 16) | 16 | "
        f"{end_to_end:.1f} | one pass | {end_to_end * flops / peak:.0%} |",
        f"| the same model alone (share of time outside the model: "
        f"{max(0.0, 1 - end_to_end / model_only):.0%}) | 16 | {model_only:.1f} | "
        f"{min(model_rates):.1f} to {max(model_rates):.1f} | {model_only * flops / peak:.0%} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="cardiomegaly speed benchmarks")
    parser.add_argument("--data", type=Path, help="the NIH sample folder (predict end to end)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--size", type=int, default=299)
    args = parser.parse_args()
    torch.set_num_threads(_cpu()[1])

    name, cores, ghz, per_cycle = _cpu()
    peak = cores * per_cycle * ghz * 1e9
    flops = _flops(build_model("inception_v3").eval(), args.size)
    header = [
        "# Benchmarks",
        "",
        f"{datetime.date.today()} · {name} · {cores} cores at {ghz:.2f} GHz · fp32 roofline "
        f"{peak / 1e9:.0f} GFLOP/s ({per_cycle} FLOP/cycle/core) · Python "
        f"{platform.python_version()} · torch {torch.__version__} · "
        f"onnxruntime {__import__('onnxruntime').__version__}",
        "",
        f"InceptionV3 (our head) at {args.size} px: {flops / 1e9:.2f} GFLOP per image, so at "
        f"most {peak / flops:.1f} images/s in fp32. Median and range of {REPS} repetitions "
        "after 2 warm-up runs; random weights.",
        "",
        "Full-network training rows count 3 x the forward FLOPs per image (forward and "
        "backward); peak RSS is each process's VmHWM.",
        "",
        "| what | batch | images/s (median) | range | of fp32 roofline |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows = inference_rows(args.size, flops, peak, Path(tmp))
        if args.data and (args.data / "images").is_dir():
            rows += predict_rows(args.data, args.size, flops, peak, Path(tmp))
        else:
            rows.append("| predict end to end | | skipped: no --data with an images/ folder | | |")
        rows += training_rows(args.size, flops, peak)
        rows += memory_rows(args.data, Path(tmp))
    text = "\n".join(header + rows) + "\n"
    args.out.write_text(text)
    print(text)
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
