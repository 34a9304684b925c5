"""``cardiomegaly listen``: a DICOM node that answers a PACS in DICOM. End to end against a real
Orthanc; the faults against a small pynetdicom PACS of the test's own."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.uid import MRImageStorage
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from cardiomegaly import Classifier
from cardiomegaly.pacs.node import Destination, Node, NodeConfig
from conftest import free_port
from makers import IDENTIFIERS, write_study_film


def _film(path, seg_phantoms, k=0, **kw):
    png = sorted((seg_phantoms / "images").glob("*.png"))[k]
    pixels = np.asarray(Image.open(png).convert("L"))
    return write_study_film(path, pixels=pixels, bits=8, **kw)


def _send(port, paths, calling="MODALITY"):
    """C-STORE each file to the node; the statuses (None where no association)."""
    ae = AE(ae_title=calling)
    for context in AllStoragePresentationContexts[:120]:
        ae.add_requested_context(context.abstract_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIO")
    if not assoc.is_established:
        return [None] * len(paths)
    try:
        return [assoc.send_c_store(pydicom.dcmread(p)).Status for p in paths]
    finally:
        assoc.release()


class FakePacs:
    """A storage SCP that keeps what it is sent (SOP Instance UID -> dataset)."""

    def __init__(self, port):
        self.port, self.received, self._server = port, {}, None

    def start(self):
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        ae.add_supported_context(Verification)

        def store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received[ds.SOPInstanceUID] = ds
            return 0x0000

        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, store)])  # fmt: skip
        return self

    def stop(self):
        self._server.shutdown()

    def wait_for(self, n, timeout=90):
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.received)


@pytest.fixture
def pacs():
    server = FakePacs(free_port()).start()
    yield server
    server.stop()


def _start_node(model, tmp_path, dest_port, **kw):
    config = NodeConfig("CARDIO", free_port(), Destination("PACS", "127.0.0.1", dest_port),
                        tmp_path / "spool", **kw)  # fmt: skip
    node = Node(model, config)
    node.start()
    return node


def _kinds(datasets):
    return sorted(ds.Modality for ds in datasets)


# ------------------------------------------------------------------------------------ Orthanc


def test_a_film_stored_in_orthanc_comes_back_with_its_sr_and_overlay(
    orthanc, tiny_run, seg_phantoms, tmp_path, caplog
):
    caplog.set_level("INFO", logger="cardiomegaly")
    model = tiny_run / "model.safetensors"
    dest = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom)
    node = Node(model, NodeConfig("CARDIO", orthanc.node_port, dest, tmp_path / "spool"))
    node.start()
    try:
        film = _film(tmp_path / "film.dcm", seg_phantoms)
        stored = orthanc.post("/instances", film.read_bytes())
        orthanc.post("/modalities/cardio/store", stored["ID"].encode())
        study = stored["ParentStudy"]
        deadline = time.monotonic() + 90
        while len(orthanc.get(f"/studies/{study}/instances")) < 3:
            assert time.monotonic() < deadline, "no results in Orthanc after 90 s"
            time.sleep(0.5)
    finally:
        node.stop()
    instances = orthanc.get(f"/studies/{study}/instances")
    files = [io.BytesIO(orthanc.get(f"/instances/{i['ID']}/file")) for i in instances]
    by_modality = {ds.Modality: ds for ds in map(pydicom.dcmread, files)}
    assert set(by_modality) == {"CR", "SR", "OT"}
    source, sr = pydicom.dcmread(film), by_modality["SR"]
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    group = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()[0]
    expected = Classifier.load(model).predict(film)
    probability = group.get_measurements(name=codes.DCM.Probability)[0].value
    assert probability == pytest.approx(expected.probability, abs=1e-4)
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.value == (codes.SCT.Present if expected.label else codes.SCT.Absent)
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [source.SOPInstanceUID]
    assert by_modality["OT"].BurnedInAnnotation == "YES"
    # Privacy: the node's log lines and its spool's bookkeeping name no patient.
    names = " ".join(str(p.relative_to(tmp_path)) for p in (tmp_path / "spool").rglob("*"))
    for secret in IDENTIFIERS.values():
        assert secret not in caplog.text and secret not in names
    assert source.SOPInstanceUID not in caplog.text and source.SOPInstanceUID not in names


# ---------------------------------------------------------------------------------- the faults


def test_other_modalities_and_lateral_films_are_acknowledged_and_skipped(
    pacs, tiny_run, seg_phantoms, tmp_path
):
    node = _start_node(tiny_run / "model.safetensors", tmp_path, pacs.port)
    try:
        mr = _film(tmp_path / "mr.dcm", seg_phantoms, modality="MR")
        ds = pydicom.dcmread(mr)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.save_as(mr, enforce_file_format=True)
        lateral = _film(tmp_path / "lat.dcm", seg_phantoms, 1, view="LL")
        frontal = _film(tmp_path / "pa.dcm", seg_phantoms, 2)
        assert _send(node.config.port, [mr, lateral, frontal]) == [0, 0, 0]
        assert pacs.wait_for(2) == 2
        time.sleep(1)
    finally:
        node.stop()
    assert _kinds(pacs.received.values()) == ["OT", "SR"]
    assert node.counts["skipped"] == 2 and node.counts["scored"] == 1


def test_a_corrupt_film_is_kept_aside_and_the_node_keeps_serving(pacs, tiny_run, seg_phantoms,
                                                                 tmp_path):  # fmt: skip
    node = _start_node(tiny_run / "model.safetensors", tmp_path, pacs.port)
    try:
        bad = _film(tmp_path / "bad.dcm", seg_phantoms)
        ds = pydicom.dcmread(bad)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # cut off in transfer
        ds.save_as(bad, enforce_file_format=True)
        good = _film(tmp_path / "good.dcm", seg_phantoms, 1)
        assert _send(node.config.port, [bad, good]) == [0, 0]
        assert pacs.wait_for(2) == 2
    finally:
        node.stop()
    failed = list((tmp_path / "spool" / "failed").glob("*.txt"))
    assert len(failed) == 1 and node.counts["failed"] == 1
    assert "pixel" in failed[0].read_text().lower() or "decode" in failed[0].read_text().lower()


def test_compressed_films_are_received_in_the_syntax_they_come_in(pacs, tiny_run, seg_phantoms,
                                                                  tmp_path):  # fmt: skip
    from pydicom.uid import JPEG2000Lossless, RLELossless

    node = _start_node(tiny_run / "model.safetensors", tmp_path, pacs.port)
    try:
        films = [_film(tmp_path / f"{name}.dcm", seg_phantoms, k, syntax=name)
                 for k, name in enumerate(["rle", "jpeg2000"])]  # fmt: skip
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage, [RLELossless])
        ae.add_requested_context(ComputedRadiographyImageStorage, [JPEG2000Lossless])
        assoc = ae.associate("127.0.0.1", node.config.port, ae_title="CARDIO")
        assert assoc.is_established
        try:
            syntaxes = [pydicom.dcmread(f).file_meta.TransferSyntaxUID for f in films]
            assert syntaxes == [RLELossless, JPEG2000Lossless]
            assert [assoc.send_c_store(f).Status for f in films] == [0, 0]
        finally:
            assoc.release()
        assert pacs.wait_for(4) == 4
    finally:
        node.stop()
    assert node.counts["scored"] == 2 and node.counts["failed"] == 0


def test_an_unknown_caller_is_refused(pacs, tiny_run, seg_phantoms, tmp_path):
    node = _start_node(tiny_run / "model.safetensors", tmp_path, pacs.port, allow=["MODALITY"])
    try:
        film = _film(tmp_path / "film.dcm", seg_phantoms)
        assert _send(node.config.port, [film], calling="STRANGER") == [None]
        assert _send(node.config.port, [film], calling="MODALITY") == [0]
        assert pacs.wait_for(2) == 2
    finally:
        node.stop()


def test_results_wait_while_the_pacs_is_down_and_arrive_when_it_is_back(tiny_run, seg_phantoms,
                                                                        tmp_path):  # fmt: skip
    port = free_port()
    node = _start_node(tiny_run / "model.safetensors", tmp_path, port, max_retry_wait=1.0)
    try:
        film = _film(tmp_path / "film.dcm", seg_phantoms)
        assert _send(node.config.port, [film]) == [0]
        deadline = time.monotonic() + 60
        while not list((tmp_path / "spool" / "outbox").glob("*/retry.json")):
            assert time.monotonic() < deadline, "no failed attempt recorded"
            time.sleep(0.2)
        pacs = FakePacs(port).start()  # the PACS comes back
        try:
            assert pacs.wait_for(2, timeout=60) == 2
        finally:
            pacs.stop()
    finally:
        node.stop()
    assert node.spool.waiting() == 0


def test_a_killed_node_gives_every_acknowledged_film_exactly_one_result(
    pacs, tiny_run, seg_phantoms, tmp_path
):
    port, spool = free_port(), tmp_path / "spool"
    argv = [sys.executable, "-m", "cardiomegaly", "listen", str(tiny_run / "model.safetensors"),
            "--port", str(port), "--dest", f"PACS@127.0.0.1:{pacs.port}",
            "--spool", str(spool)]  # fmt: skip

    def start():
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while _echo(port) is False:
            assert process.poll() is None and time.monotonic() < deadline, "the node did not start"
            time.sleep(0.2)
        return process

    films = [_film(tmp_path / f"f{k}.dcm", seg_phantoms, k) for k in range(6)]
    process = start()
    assert _send(port, films) == [0] * 6  # all acknowledged...
    process.send_signal(signal.SIGKILL)  # ...and the node killed at once
    process.wait()
    process = start()
    try:
        assert pacs.wait_for(12) == 12
        time.sleep(2)  # nothing more arrives
        assert len(pacs.received) == 12
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    sources = [pydicom.dcmread(f).SOPInstanceUID for f in films]
    referenced = sorted(
        ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for ds in pacs.received.values() if ds.Modality == "SR"
    )  # fmt: skip
    assert referenced == sorted(sources)  # one SR for each film, none twice


def _echo(port):
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIO")
    if not assoc.is_established:
        return False
    assoc.release()
    return True
