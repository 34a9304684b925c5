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
import json
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


# Medians by row name and batch, for the goals under the table.
MEASURED: dict[tuple[str, int], float] = {}


def get(name: str, batch: int = 16) -> float:
    """A median measured so far (NaN when that row did not run)."""
    return MEASURED.get((name, batch), float("nan"))


def _row(name: str, batch: int, rates: list[float], flops: float, peak: float) -> str:
    median = statistics.median(rates)
    MEASURED[name.split(" (first call")[0], batch] = median
    return (f"| {name} | {batch} | {median:.1f} | {min(rates):.1f} to {max(rates):.1f} | "
            f"{median * flops / peak:.0%} |")  # fmt: skip


def inference_rows(
    size: int, flops: float, peak: float, workdir: Path, compile_: bool
) -> list[str]:
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
    # With "exported_from" in it, this export is what predict's default backend picks up.
    onnx_path = export(path, "onnx", workdir / "model.onnx").path
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    int8_session = _int8_session(onnx_path, films, workdir)
    engines = [
        ("PyTorch, default layout", torch_run(model, torch.contiguous_format)),
        ("PyTorch, channels_last", torch_run(channels_last, torch.channels_last)),
    ]
    if compile_:
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights become constants: conv + batch-norm folding
        compiled = torch.compile(channels_last)
        engines.append(("PyTorch, channels_last + torch.compile (freezing)",
                        torch_run(compiled, torch.channels_last)))  # fmt: skip
    engines += [
        ("ONNX Runtime fp32 (predict's default on a CPU)",
         lambda b: session.run(None, {"image": b})),
        ("ONNX Runtime int8 (static QDQ, u8 activations, s8 weights)",
         lambda b: int8_session.run(None, {"image": b})),
    ]  # fmt: skip
    for name, run in engines:
        for batch in (1, 16):
            compile_start = time.perf_counter()
            run(films[:batch])  # the first call compiles, for torch.compile
            first = time.perf_counter() - compile_start
            label = f"{name} (first call {first:.0f} s)" if "compile" in name else name
            rows.append(_row(label, batch, _time(run, films[:batch]), flops, peak))
            print(rows[-1], flush=True)
    return rows


def _int8_session(onnx_path: Path, films: np.ndarray, workdir: Path):
    """Quantized with the settings of ``export --int8``, calibrated on phantom films."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cardiomegaly.export import int8_settings

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([films[i : i + 4] for i in range(0, len(films), 4)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    prepared, quantized = workdir / "prepared.onnx", workdir / "int8.onnx"
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(quantized), Reader(), **int8_settings())
    return ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])


def training_rows(size: int, flops: float, peak: float) -> list[str]:
    """Training steps (forward, backward, AdamW) on phantom films, channels_last, fp32: the full
    network (training from scratch), the top blocks only (Mixed_6*, Mixed_7*: stage 2 of
    transfer learning) and the head only (stage 1, the base frozen)."""
    films = torch.from_numpy(sample_films(32, size, seed=2)).float().div(255)[:, None]
    labels = (torch.arange(32) % 2).float()
    rows = []
    stages = (("full network", "all"), ("top blocks only", ("Mixed_6", "Mixed_7")),
              ("head only, base frozen (stage 1)", "head"))  # fmt: skip
    for name, blocks in stages:
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
            if blocks != "all":  # the backward pass stops early: no 3x count
                row = row.rsplit("|", 2)[0] + "| n/a |"
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


# The child's own high-water mark: ru_maxrss would include the parent's, inherited at fork.
_HWM_KB = ("next(int(line.split()[1]) for line in open('/proc/self/status') "
           "if line.startswith('VmHWM'))")  # fmt: skip
_HWM = f"print({_HWM_KB})"


def memory_rows(data: Path | None, workdir: Path) -> list[str]:
    """Peak resident memory of predict (batch 16; the default backend and PyTorch) and of
    training steps (batch 32), each in a fresh process so that nothing else counts."""
    rows = []
    if data is not None and (data / "images").is_dir():
        for backend in ("auto", "torch"):
            code = ("from cardiomegaly.predict import Classifier, find_images; "
                    f"c = Classifier.load({str(workdir / 'model.safetensors')!r}, device='cpu', "
                    f"backend={backend!r}); "
                    f"list(c.predict_many(find_images([{str(data / 'images')!r}]), "
                    f"batch_size=16)); print(c.backend, {_HWM_KB})")  # fmt: skip
            used, kb = _child(code)
            name = f"peak RSS, predict on the NIH sample ({BACKENDS[used]})"
            MEASURED[name, 16] = int(kb) / 2**20
            rows.append(f"| {name} | 16 | {int(kb) / 2**20:.2f} GB | one run | |")
    (kb,) = _child(f"import cardiomegaly.predict; {_HWM}")
    MEASURED["RSS after importing the predict module", 16] = int(kb) / 2**20
    rows.append(f"| peak RSS, importing the predict module only | | {int(kb) / 2**20:.2f} GB "
                "| one run | |")  # fmt: skip
    code = ("import torch; from cardiomegaly.model import build_model; "
            "m = build_model('inception_v3').train().to(memory_format=torch.channels_last); "
            "o = torch.optim.AdamW(m.parameters()); "
            "x = torch.rand(32, 1, 299, 299).contiguous(memory_format=torch.channels_last)\n"
            "for _ in range(2):\n"
            "    o.zero_grad(); m(x).sum().backward(); o.step()\n"
            f"{_HWM}")  # fmt: skip
    (kb,) = _child(code)
    MEASURED["peak RSS, training", 32] = int(kb) / 2**20
    rows.append(f"| peak RSS, training the full network | 32 | {int(kb) / 2**20:.2f} GB "
                "| one run | |")  # fmt: skip
    return rows


BACKENDS = {"onnx": "default backend: ONNX Runtime", "torch": "PyTorch backend"}


def _child(code: str, env: dict[str, str] | None = None, script: Path | None = None) -> list[str]:
    """The last line a fresh Python process (running ``code`` or ``script``) printed, split on
    spaces."""
    import subprocess

    argv = [sys.executable, str(script)] if script else [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return done.stdout.strip().splitlines()[-1].split()


def predict_rows(data: Path, size: int, flops: float, peak: float, workdir: Path) -> list[str]:
    """`predict` on the real images (decode + preprocessing + model) and the model alone, with
    the default backend (ONNX Runtime: the run folder's model.onnx) and with PyTorch."""
    from cardiomegaly.predict import Classifier, find_images

    paths = find_images([data / "images"])
    rows = []
    for backend in ("auto", "torch"):
        clf = Classifier.load(workdir / "model.safetensors", device="cpu", backend=backend)
        list(clf.predict_many(paths[:32], batch_size=16))  # warm-up
        start = time.perf_counter()
        predictions = list(clf.predict_many(paths, batch_size=16))
        wall = time.perf_counter() - start
        images = np.stack([clf.preprocess(p) for p in paths[:16]])
        model_rates = _time(lambda b, clf=clf: clf.probabilities(b), images)
        end_to_end = len(predictions) / wall
        model_only = statistics.median(model_rates)
        name = f"predict end to end, {BACKENDS[clf.backend]}"
        MEASURED[name, 16] = end_to_end
        MEASURED[f"model alone, {BACKENDS[clf.backend]}", 16] = model_only
        rows += [
            f"| {name} ({len(paths)} NIH JPEGs) | 16 | {end_to_end:.1f} | one pass | "
            f"{end_to_end * flops / peak:.0%} |",
            f"| the same model alone (share of time outside the model: "
            f"{max(0.0, 1 - end_to_end / model_only):.0%}) | 16 | {model_only:.1f} | "
            f"{min(model_rates):.1f} to {max(model_rates):.1f} | {model_only * flops / peak:.0%} |",
        ]
        print("\n".join(rows[-2:]), flush=True)
    return rows


def epoch_rows(data: Path, size: int) -> list[str]:
    """One training epoch's data side on the real sample (the default split's training images,
    with augmentation): read from the preprocessing cache, and decoded from the JPEGs every time
    as without a cache. The epoch time adds the measured full-network step rate (batch 32)."""
    from cardiomegaly.config import AugmentConfig, SplitConfig
    from cardiomegaly.data.cache import ImageCache
    from cardiomegaly.data.dataset import XrayDataset, train_augmentation
    from cardiomegaly.data.preprocess import prepare_file, to_float
    from cardiomegaly.data.records import load_records
    from cardiomegaly.data.split import patient_split

    records = load_records(data)
    table = records.table[patient_split(records, SplitConfig()) == "train"]
    augment = train_augmentation(AugmentConfig())
    with tempfile.TemporaryDirectory() as tmp:
        cache = ImageCache(size, root=tmp)
        cache.warm(list(table["path"]))
        cached = XrayDataset(table, cache, augment)

        class Decoding(XrayDataset):
            def __getitem__(self, i):
                x = torch.from_numpy(to_float(prepare_file(self.paths[i], size, "pad")))[None]
                return self.augment(x), self.labels[i]

        seconds = {}
        for name, ds in (("cache", cached), ("decode", Decoding(table, cache, augment))):
            start = time.perf_counter()
            for _batch in torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True):
                pass
            seconds[name] = time.perf_counter() - start
    compute = len(table) / MEASURED["training, full network", 32]
    with_cache, without = compute + seconds["cache"], compute + seconds["decode"]
    MEASURED["epoch speed-up from the cache", 32] = without / with_cache
    return [
        f"| one epoch's data, from the cache ({len(table)} NIH training images) | 32 | "
        f"{len(table) / seconds['cache']:.0f} | {seconds['cache']:.1f} s | |",
        f"| one epoch's data, decoding every JPEG (no cache) | 32 | "
        f"{len(table) / seconds['decode']:.0f} | {seconds['decode']:.1f} s | |",
        f"| epoch, full network: with the cache / without (compute {compute:.0f} s + data) | "
        f"32 | {len(table) / with_cache:.2f} / {len(table) / without:.2f} | {with_cache:.0f} s"
        f" / {without:.0f} s: {without / with_cache:.2f}x | |",
    ]


def keras_rows(peak: float) -> list[str]:
    """The seed's Keras configuration (benchmarks/keras_seed.py) with TensorFlow's oneDNN off
    (its default on AMD CPUs) and on, and our matching figures."""
    script = Path(__file__).with_name("keras_seed.py")
    seed_flops, head_flops = _seed_flops()
    rows = []
    for onednn in ("0", "1"):
        try:
            out = json.loads(" ".join(_child("", {"TF_ENABLE_ONEDNN_OPTS": onednn}, script)))
        except (RuntimeError, ValueError) as exc:
            reason = f"skipped: TensorFlow could not run ({exc}); pip install -e '.[bench-keras]'"
            return [f"| the seed's Keras configuration | | {reason} | | |"]
        label = f"Keras {out['tensorflow']}, oneDNN {'on' if onednn == '1' else 'off'}"
        for key, what, batch, flops in (
            ("inference_16", "inference", 16, seed_flops),
            ("train_1", "training, base frozen", 1, seed_flops + 2 * head_flops),
            ("train_16", "training, base frozen", 16, seed_flops + 2 * head_flops),
        ):
            rows.append(_row(f"seed ({label}), 256 px, {what}", batch, out[key], flops, peak))
            print(rows[-1], flush=True)
    return rows


def _seed_flops() -> tuple[float, float]:
    """FLOPs per image of the seed's network at 256 px (torchvision's InceptionV3 through
    Mixed_6e, Keras' mixed7, plus the Flatten -> 1024 -> 1 head) and of its head alone."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    stem = torch.nn.Sequential(*list(net.children())[:15])  # Conv2d_1a_3x3 ... Mixed_6e
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        features = stem(torch.zeros(1, 3, 256, 256))
    head = 2 * (features.numel() * 1024 + 1024)
    return float(counter.get_total_flops()) + head, float(head)


def int8_auroc_rows(model: Path, data: Path) -> list[str]:
    """`export --int8` on a trained model: validation AUROC of int8 against fp32."""
    from cardiomegaly.export import export, quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model.safetensors"
        copy.write_bytes(model.read_bytes())
        fp32 = export(copy, "onnx").path
        q = quantize_int8(copy, fp32, data)
    MEASURED["int8 AUROC change", 0] = q.val_auroc_int8 - q.val_auroc_fp32
    return [f"| int8 validation AUROC ({model}, {q.val_images} NIH images) | | "
            f"{q.val_auroc_int8:.4f} vs fp32 {q.val_auroc_fp32:.4f} | "
            f"{q.val_auroc_int8 - q.val_auroc_fp32:+.4f} | |"]  # fmt: skip


def profile_rows(size: int) -> list[str]:
    """torch.profiler's top operators of one full-network training step (batch 16)."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model("inception_v3").train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.from_numpy(sample_films(16, size, seed=3)).float().div(255)[:, None]
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).sum().backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    seconds = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    MEASURED["profile: step s", 16] = total / 1e6
    MEASURED["profile: conv forward s", 16] = seconds.get("aten::mkldnn_convolution", 0.0)
    MEASURED["profile: conv backward s", 16] = seconds.get("aten::convolution_backward", 0.0)
    return [
        f"- `{e.key}`: {e.self_cpu_time_total / total:.0%} of the step "
        f"({e.self_cpu_time_total / 1e6:.2f} s, {e.count} calls)"
        for e in events[:4]
    ]


def findings(flops: float, seed_flops: float, peak: float) -> list[str]:
    """What bounds each missed goal and what would move it, from this run's numbers."""
    out = []
    full = get("training, full network", 32)
    if not full >= 3.0:
        forward, backward = get("profile: conv forward s"), get("profile: conv backward s")
        out.append(
            f"- **Full fine-tuning ({full:.1f} images/s, goal 3.0).** Convolution backward takes "
            f"{backward / get('profile: step s'):.0%} of a step and runs at "
            f"{2 * 16 * flops / backward / 1e9:.0f} GFLOP/s, against "
            f"{16 * flops / forward / 1e9:.0f} GFLOP/s for the forward convolutions (peak "
            f"{peak / 1e9:.0f}): oneDNN's backward kernels on this AVX2 CPU bound it. "
            "channels_last is already on (the default layout is slower); bfloat16 has no "
            "hardware here. What would move it: a GPU; training the top blocks only (the "
            "transfer-learning stage 2 row above); or a smaller input (256 px needs 33 % fewer "
            "FLOPs, but a model trained for it)."
        )
    int8 = get("ONNX Runtime int8 (static QDQ, u8 activations, s8 weights)")
    keras = max((v for k, v in MEASURED.items() if k[0].startswith("seed") and "inference" in k[0]),
                default=float("nan"))  # fmt: skip
    if not int8 >= 2 * keras:
        out.append(
            f"- **Inference against the seed ({int8 / keras:.2f}x, goal 2x).** The seed's network "
            f"does {seed_flops / 1e9:.2f} GFLOP per image at 256 px, ours "
            f"{flops / 1e9:.2f} at 299 ({flops / seed_flops:.2f}x the work); per FLOP, our int8 "
            f"path is {int8 * flops / (keras * seed_flops):.2f}x Keras. int8 already runs past "
            "the fp32 roofline; this CPU has no VNNI instructions, on which int8 convolutions "
            "run about twice as fast again. What would move it: a CPU with AVX-VNNI or "
            "AVX-512 VNNI, or a model trained at 256 px."
        )
    speedup = get("epoch speed-up from the cache", 32)
    if not speedup >= 1.5:
        out.append(
            f"- **The cache ({speedup:.2f}x per epoch, goal 1.5x).** An epoch here is compute: "
            "the model steps take minutes, decoding every JPEG (Pillow's draft mode, one core) "
            "seconds (the rows above). The cache pays off where compute is fast: on a GPU "
            "training at hundreds of images/s, decoding would be most of an epoch."
        )
    rss = get("peak RSS, predict on the NIH sample (default backend: ONNX Runtime)")
    if not rss <= 1.0:
        imported = get("RSS after importing the predict module")
        out.append(
            f"- **predict's memory ({rss:.2f} GB, goal 1.0).** Importing the predict module "
            f"(torch, torchvision, ONNX Runtime) already holds {imported:.2f} GB before any "
            "model is loaded. What would move it: an ONNX-only predict path that does not "
            "import torch."
        )
    return out


def goal_rows() -> list[str]:
    default_model = get("model alone, default backend: ONNX Runtime")
    keras = {k: v for k, v in MEASURED.items() if k[0].startswith("seed")}
    seed_infer = max((v for k, v in keras.items() if "inference" in k[0]), default=float("nan"))
    seed_train = max((v for k, v in keras.items() if "training" in k[0] and k[1] == 1),
                     default=float("nan"))  # fmt: skip
    int8 = get("ONNX Runtime int8 (static QDQ, u8 activations, s8 weights)")
    ours_train = get("training, head only, base frozen (stage 1)", 32)
    goals = [
        ("default predict, model alone >= 11 images/s", default_model, default_model >= 11),
        ("default predict end to end >= 0.9 x model alone",
         get("predict end to end, default backend: ONNX Runtime") / default_model,
         get("predict end to end, default backend: ONNX Runtime") >= 0.9 * default_model),
        ("int8 >= 18 images/s", int8, int8 >= 18),
        ("int8 validation AUROC within 0.005 of fp32", get("int8 AUROC change", 0),
         abs(get("int8 AUROC change", 0)) <= 0.005),
        ("inference >= 2x the seed's Keras (int8 vs Keras' best, batch 16)",
         int8 / seed_infer, int8 >= 2 * seed_infer),
        ("training >= 2x the seed's (stage 1, our batch 32 vs its batch 1, its best)",
         ours_train / seed_train, ours_train >= 2 * seed_train),
        ("full fine-tuning >= 3.0 images/s (batch 32)", get("training, full network", 32),
         get("training, full network", 32) >= 3.0),
        ("epochs after the first >= 1.5x faster with the cache",
         get("epoch speed-up from the cache", 32),
         get("epoch speed-up from the cache", 32) >= 1.5),
        ("predict peak RSS <= 1.0 GB (default backend)",
         get("peak RSS, predict on the NIH sample (default backend: ONNX Runtime)"),
         get("peak RSS, predict on the NIH sample (default backend: ONNX Runtime)") <= 1.0),
        ("training peak RSS <= 6 GB (batch 32)", get("peak RSS, training", 32),
         get("peak RSS, training", 32) <= 6.0),
    ]  # fmt: skip
    rows = ["| goal | measured | met |", "|---|---|---|"]
    for name, value, met in goals:
        verdict = "not measured" if value != value else "yes" if met else "no"
        rows.append(f"| {name} | {value:.2f} | {verdict} |" if abs(value) >= 0.01 or value == 0
                    else f"| {name} | {value:.4f} | {verdict} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="cardiomegaly speed benchmarks")
    parser.add_argument("--data", type=Path, help="the NIH sample folder (predict, epochs)")
    parser.add_argument("--model", type=Path, help="a model trained on --data (int8 AUROC)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (~2 min)")
    args = parser.parse_args()

    name, cores, ghz, per_cycle = _cpu()
    peak = cores * per_cycle * ghz * 1e9
    flops = _flops(build_model("inception_v3").eval(), args.size)
    seed_flops, _ = _seed_flops()
    header = [
        "# Benchmarks",
        "",
        f"{datetime.date.today()} · {name} · {cores} cores at {ghz:.2f} GHz · fp32 roofline "
        f"{peak / 1e9:.0f} GFLOP/s ({per_cycle} FLOP/cycle/core) · Python "
        f"{platform.python_version()} · torch {torch.__version__} · "
        f"onnxruntime {__import__('onnxruntime').__version__}",
        "",
        f"InceptionV3 (our head) at {args.size} px: {flops / 1e9:.2f} GFLOP per image, so at "
        f"most {peak / flops:.1f} images/s in fp32. The seed's network (cut at mixed7, 256 px): "
        f"{seed_flops / 1e9:.2f} GFLOP. Median and range of {REPS} repetitions after 2 warm-up "
        "runs; random weights. Threads: one per core. The clock is /proc/cpuinfo's; a figure "
        "over 100 % means the cores ran above it (boost), and int8 is not bound by the fp32 "
        "roofline.",
        "",
        "Full-network training rows count 3 x the forward FLOPs per image (forward and "
        "backward), the seed's frozen-base training its forward plus 3 x its head; peak RSS is "
        "each process's VmHWM.",
        "",
        "| what | batch | images/s (median) | range | of fp32 roofline |",
        "|---|---|---|---|---|",
    ]
    has_data = args.data is not None and (args.data / "images").is_dir()
    with tempfile.TemporaryDirectory() as tmp:
        rows = inference_rows(args.size, flops, peak, Path(tmp), not args.no_compile)
        if has_data:
            rows += predict_rows(args.data, args.size, flops, peak, Path(tmp))
        else:
            rows.append("| predict end to end | | skipped: no --data with an images/ folder | | |")
        rows += training_rows(args.size, flops, peak)
        if has_data:
            rows += epoch_rows(args.data, args.size)
        rows += memory_rows(args.data if has_data else None, Path(tmp))
    rows += keras_rows(peak)
    if args.model and has_data:
        rows += int8_auroc_rows(args.model, args.data)
    else:
        rows.append("| int8 validation AUROC | | skipped: give --model (trained on --data) | | |")
    findings_ = profile_rows(args.size)
    text = "\n".join(header + rows + ["", "## Goals", ""] + goal_rows() + [
        "", "## Where the time goes: one full-network training step (torch.profiler)", ""]
        + findings_ + ["", "## Findings for the goals missed", ""]
        + (findings(flops, seed_flops, peak) or ["None."])) + "\n"  # fmt: skip
    args.out.write_text(text)
    print(text)
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
