"""The DICOM node under load and under faults, against a real Orthanc (not a test: minutes).

1. Load: 4 senders x 50 films into ``cardiomegaly listen`` at once; every result must reach
   Orthanc exactly once. Films per second (first send to last result) and the node's peak RSS.
2. SIGKILL while receiving: the node is killed after about 20 of 50 acknowledged films and
   restarted; the sender sends again what was not acknowledged; every acknowledged film must get
   exactly one result.
3. Orthanc stopped while results are pending: they must arrive after it returns.

    python benchmarks/node_load.py --out benchmarks/node_load.json [--model MODEL]

Without --model, an InceptionV3 at 299 px with random weights (speed does not depend on them)
is written and exported to ONNX first. Needs Debian's orthanc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from makers import write_study_film  # the tests' film maker


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: Path, node_port: int) -> None:
        self.folder, self.http, self.dicom = folder, _port(), _port()
        config = {"Name": "bench", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "index"), "HttpPort": self.http,
                  "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
                  "DicomAlwaysAllowStore": True, "Plugins": [],
                  "DicomModalities": {"cardio": ["CARDIO", "127.0.0.1", node_port]}}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.process = None

    def start(self) -> None:
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([exe, str(self.folder / "orthanc.json")], stdout=log,
                                        stderr=log)  # fmt: skip
        for _ in range(150):
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            return json.loads(r.read())

    def results(self) -> dict[str, int]:
        counts = self.get("/statistics")
        series = [self.get(f"/series/{s}") for s in self.get("/series")]
        by = {"SR": 0, "OT": 0, "CR": 0}
        for s in series:
            by[s["MainDicomTags"].get("Modality", "?")] = by.get(
                s["MainDicomTags"].get("Modality", "?"), 0) + len(s["Instances"])  # fmt: skip
        by["instances"] = counts["CountInstances"]
        return by


def _films(folder: Path, n: int, tag: str) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        pixels = (rng.random((512, 512)) * 255).astype(np.uint8)
        out.append(write_study_film(folder / f"{tag}-{k}.dcm", pixels=pixels, bits=8))
    return out


def _send(port: int, films: list[Path], acked: list[str] | None = None) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIO")
    done = 0
    if not assoc.is_established:
        return 0
    try:
        for f in films:
            ds = pydicom.dcmread(f)
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) == 0:
                done += 1
                if acked is not None:
                    acked.append(ds.SOPInstanceUID)
            else:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return done


def _echo(port: int) -> bool:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIO")
    ok = assoc.is_established
    if ok:
        assoc.release()
    return ok


class NodeProcess:
    def __init__(self, model: Path, port: int, dest: str, spool: Path, log: Path) -> None:
        self.argv = [sys.executable, "-m", "cardiomegaly", "listen", str(model), "--port",
                     str(port), "--dest", dest, "--spool", str(spool)]  # fmt: skip
        self.port, self.log = port, log

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(self.argv, stdout=out, stderr=out)
        while not _echo(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited; see {self.log}")
            time.sleep(0.2)

    def peak_rss_gb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 2**20
        return float("nan")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def _start(model: Path, tmp: Path, name: str) -> tuple[int, Orthanc, NodeProcess]:
    """A fresh Orthanc and a node that sends to it, each with folders named ``name``."""
    port = _port()
    orthanc = Orthanc(tmp / f"orthanc-{name}", port)
    orthanc.start()
    node = NodeProcess(model, port, f"ORTHANC@127.0.0.1:{orthanc.dicom}", tmp / f"spool-{name}",
                       tmp / f"node-{name}.log")  # fmt: skip
    node.start()
    return port, orthanc, node


def _wait(orthanc: Orthanc, srs: int, timeout: float) -> float:
    start = time.perf_counter()
    while orthanc.results()["SR"] < srs:
        if time.perf_counter() - start > timeout:
            break
        time.sleep(0.5)
    return time.perf_counter()


def _model(folder: Path) -> Path:
    from cardiomegaly.export import export
    from cardiomegaly.model import build_model, preprocessing_for, save_model

    path = folder / "model.safetensors"
    meta = {"preprocessing": preprocessing_for("inception_v3", 299, "pad"),
            "threshold": {"value": 0.5, "rule": "fixed:0.5", "chosen_on": "benchmark"},
            "training": {}}  # fmt: skip
    save_model(path, build_model("inception_v3").eval(), meta)
    export(path, "onnx", folder / "model.onnx")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--films", type=int, default=50, help="per sender")
    parser.add_argument("--out", default="benchmarks/node_load.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="node-load-"))
    model = Path(args.model) if args.model else _model(tmp)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "model": str(model)}  # fmt: skip

    # 1. Load.
    port, orthanc, node = _start(model, tmp, "load")
    batches = [_films(tmp / "films", args.films, f"s{k}") for k in range(args.senders)]
    start = time.perf_counter()
    threads = [threading.Thread(target=_send, args=(port, b)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked_s = time.perf_counter() - start
    total = args.senders * args.films
    end = _wait(orthanc, total, timeout=3600)
    counts = orthanc.results()
    report["load"] = {
        "films": total,
        "senders": args.senders,
        "acknowledged_in_s": round(acked_s, 1),
        "results_in_s": round(end - start, 1),
        "films_per_s": round(total / (end - start), 2),
        "node_peak_rss_gb": round(node.peak_rss_gb(), 2),
        "orthanc": counts,
        "exactly_once": counts["SR"] == total and counts["OT"] == total,
    }
    print(json.dumps(report["load"], indent=1), flush=True)
    node.stop()
    orthanc.stop()

    # 2. SIGKILL while receiving.
    port, orthanc, node = _start(model, tmp, "kill")
    films = _films(tmp / "films-kill", args.films, "k")
    acked: list[str] = []
    sender = threading.Thread(target=_send, args=(port, films, acked))
    sender.start()
    while len(acked) < args.films * 2 // 5:
        time.sleep(0.01)
    node.kill()
    sender.join()
    first = len(acked)
    node.start()
    _send(port, films[first:], acked)  # the modality sends again what was not acknowledged
    _wait(orthanc, len(acked), timeout=3600)
    time.sleep(5)
    counts = orthanc.results()
    report["sigkill"] = {
        "acknowledged_before_kill": first,
        "acknowledged": len(set(acked)),
        "orthanc": counts,
        "exactly_once": counts["SR"] == len(set(acked)) == counts["OT"],
    }
    print(json.dumps(report["sigkill"], indent=1), flush=True)

    # 3. Orthanc stopped while results are pending.
    orthanc.stop()
    more = _films(tmp / "films-down", 10, "d")
    _send(port, more)
    spool = tmp / "spool-kill" / "outbox"
    deadline = time.monotonic() + 600
    while sum(1 for _ in spool.iterdir()) < 10 and time.monotonic() < deadline:
        time.sleep(0.5)
    pending = sum(1 for _ in spool.iterdir())
    orthanc.start()
    back = time.perf_counter()
    _wait(orthanc, len(set(acked)) + 10, timeout=900)
    counts = orthanc.results()
    report["pacs_down"] = {
        "pending_while_down": pending,
        "orthanc_after": counts,
        "all_arrived": counts["SR"] == len(set(acked)) + 10,
        "seconds_after_return": round(time.perf_counter() - back, 1),
    }
    print(json.dumps(report["pacs_down"], indent=1), flush=True)
    node.stop()
    orthanc.stop()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
