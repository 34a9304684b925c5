"""Load benchmark for `cardiomegaly serve` (a benchmark, not a test).

Starts the server on loopback in its own process, sends CLIENTS x UPLOADS concurrent uploads of
one image, and prints errors, throughput, p50/p99 latency and the server's resident memory
before and after.

    python benchmarks/serve_load.py MODEL IMAGE [--clients 32] [--uploads 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(url: str, data: bytes, uploads: int, latencies: list, errors: list) -> None:
    async with httpx.AsyncClient(timeout=300) as client:
        for _ in range(uploads):
            start = time.perf_counter()
            try:
                r = await client.post(url, files={"file": ("film", data)})
                if r.status_code != 200:
                    errors.append(r.status_code)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)


async def _load(url: str, data: bytes, clients: int, uploads: int) -> tuple[list, list, float]:
    latencies: list[float] = []
    errors: list = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(url, data, uploads, latencies, errors) for _ in range(clients)))
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cardiomegaly", "serve", args.model, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        data = Path(args.image).read_bytes()
        asyncio.run(_load(f"{base}/v1/predict", data, 2, 2))  # warm-up
        before = _rss_mb(server.pid)
        latencies, errors, wall = asyncio.run(
            _load(f"{base}/v1/predict", data, args.clients, args.uploads)
        )
        after = _rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    cuts = statistics.quantiles(latencies, n=100)
    import torch

    print(f"machine     {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"load        {args.clients} clients x {args.uploads} uploads of {args.image} "
          f"({len(data) / 1024:.0f} kB)")  # fmt: skip
    print(f"errors      {len(errors)} {sorted(set(map(str, errors)))}")
    print(f"throughput  {len(latencies) / wall:.1f} requests/s ({wall:.1f} s)")
    print(f"latency     p50 {cuts[49] * 1000:.0f} ms, p99 {cuts[98] * 1000:.0f} ms")
    print(f"server RSS  {before:.0f} MB before, {after:.0f} MB after "
          f"({(after - before) / before * 100:+.1f} %)")  # fmt: skip


if __name__ == "__main__":
    main()
