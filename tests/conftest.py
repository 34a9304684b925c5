"""Shared fixtures: an isolated cache per test session and the optional real NIH sample."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

NIH_SAMPLE = Path(
    os.environ.get(
        "CARDIOMEGALY_NIH_SAMPLE",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr-cardiomegaly",
    )
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's real cache folder."""
    monkeypatch.setenv("CARDIOMEGALY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def nih_sample() -> Path:
    """The real NIH sample beside the repository; the test is skipped where it is absent."""
    if not (NIH_SAMPLE / "Data_Entry_2017_v2020.csv").is_file():
        pytest.skip(f"real NIH sample not found at {NIH_SAMPLE}")
    return NIH_SAMPLE


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Thirty 80 px phantoms from 15 patients: enough for three splits with both classes."""
    from cardiomegaly import synthesize

    root = tmp_path_factory.mktemp("tiny-phantoms")
    synthesize(root, n=30, size=80, seed=4, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished training run on the tiny phantoms, shared by the tests that read runs."""
    from cardiomegaly import train
    from makers import tiny_train_config

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    # Session fixtures start before the per-test cache is set: name the cache explicitly.
    cache = tmp_path_factory.getbasetemp() / "cache"
    train(tiny_train_config(tiny_phantoms, cache_dir=str(cache), export_onnx=True), out=run)
    return run


@pytest.fixture(scope="session")
def small_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with the small-data preset's network (the U-Net encoder), exported to ONNX:
    for tests of what any model file goes through, where InceptionV3's exports (10 s each)
    would only cost time."""
    from cardiomegaly import train
    from makers import tiny_train_config

    run = tmp_path_factory.mktemp("small-run") / "run"
    cache = tmp_path_factory.getbasetemp() / "cache"
    train(tiny_train_config(tiny_phantoms, cache_dir=str(cache), arch="unet_encoder",
                            export_onnx=True), out=run)  # fmt: skip
    return run


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run: Path) -> Path:
    """The tiny run's ONNX export, which training wrote beside its model file."""
    return tiny_run / "model.onnx"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, driven by Playwright); skipped where either is missing."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    executable = (os.environ.get("CARDIOMEGALY_CHROMIUM") or shutil.which("chromium")
                  or shutil.which("chromium-browser"))  # fmt: skip
    if not executable:
        pytest.skip("no chromium on PATH (make test installs it with apt when run as root)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox"])  # fmt: skip
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def seg_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixty 96 px phantoms with their heart and lung masks."""
    from cardiomegaly import synthesize

    root = tmp_path_factory.mktemp("seg-phantoms")
    synthesize(root, n=60, size=96, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def seg_run(seg_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A segment model trained on the phantoms (25 epochs at 96 px, about half a minute)."""
    from cardiomegaly import TrainConfig, train

    run = tmp_path_factory.mktemp("seg-run") / "run"
    cache = tmp_path_factory.getbasetemp() / "cache"
    config = TrainConfig.from_preset(
        None,
        task="segment",
        data=str(seg_phantoms),
        image_size=96,
        epochs=25,
        batch_size=4,
        lr=3e-3,
        cache_dir=str(cache),
        export_onnx=False,
    )
    train(config, out=run)
    return run


@pytest.fixture(scope="session")
def cv_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-fold cross-validation of the tiny phantoms (one epoch per fold) and its ensemble,
    exported to ONNX. The small-data preset's network (the U-Net encoder): the ensemble's
    mechanics do not depend on it, and InceptionV3's export alone takes 30 s (``tiny_run``
    covers InceptionV3)."""
    from cardiomegaly import train
    from makers import tiny_train_config

    run = tmp_path_factory.mktemp("cv-run") / "run"
    cache = tmp_path_factory.getbasetemp() / "cache"
    train(tiny_train_config(tiny_phantoms, cache_dir=str(cache), epochs=1, folds=3,
                            arch="unet_encoder", export_onnx=True), out=run)  # fmt: skip
    return run


@pytest.fixture(scope="session")
def crop_run(tiny_phantoms: Path, seg_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-fold cross-validation (one epoch per fold) on the tiny phantoms cut to the thorax by
    the phantom segment model, exported to ONNX (two files); the U-Net encoder, as the
    small-data preset pairs it with the cut."""
    from cardiomegaly import train
    from makers import tiny_train_config

    run = tmp_path_factory.mktemp("crop-run") / "run"
    cache = tmp_path_factory.getbasetemp() / "cache"
    train(tiny_train_config(tiny_phantoms, cache_dir=str(cache), epochs=1, folds=2,
                            arch="unet_encoder", thorax_crop=str(seg_run / "model.safetensors"),
                            export_onnx=True), out=run)  # fmt: skip
    return run


def free_port() -> int:
    """A TCP port nobody listens on now (loopback)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, *argv: str):
    """``cardiomegaly ARGV`` under two CPU processes (torchrun, gloo), which must succeed; its
    preprocessing cache in ``tmp_path``. Returns the finished process (stdout for the checks)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CARDIOMEGALY_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "cardiomegaly",
               *argv]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@dataclass
class OrthancServer:
    """A running Orthanc of the test's own, on loopback, with the node registered as modality
    ``cardio``."""

    http: int
    dicom: int
    aet: str
    node_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def get(self, path: str):
        import json
        import urllib.request

        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            body = response.read()
        return (
            json.loads(body) if response.headers.get_content_type() == "application/json" else body
        )

    def post(self, path: str, data: bytes):
        import json
        import urllib.request

        request = urllib.request.Request(self.url(path), data=data, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture
def orthanc(tmp_path: Path):
    """Debian's Orthanc, started with a configuration of this test's own (free ports, its own
    storage; a system instance on 4242/8042 is left alone). Skipped where it is not installed."""
    import json
    import subprocess
    import time
    import urllib.error
    import urllib.request

    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.access(exe, os.X_OK):
        pytest.skip("Orthanc not installed (make test installs Debian's orthanc when run as root)")
    server = OrthancServer(
        http=free_port(), dicom=free_port(), aet="ORTHANC", node_port=free_port()
    )
    folder = tmp_path / "orthanc"
    folder.mkdir()
    config = {
        "Name": "cardiomegaly-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": server.http,
        "DicomPort": server.dicom,
        "DicomAet": server.aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "Plugins": [],
        "DicomModalities": {"cardio": ["CARDIO", "127.0.0.1", server.node_port]},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([exe, str(folder / "orthanc.json")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(server.url("/system"), timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("Orthanc did not start: " + (folder / "orthanc.log").read_text())
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
