"""``cardiomegaly listen``: a DICOM node that a PACS sends films to and that answers in DICOM.

C-ECHO and C-STORE (pynetdicom). Each film is answered as soon as it is safely in the spool
(:mod:`cardiomegaly.pacs.spool`); a worker scores frontal CR and DX films in the order they came,
and a sender stores each film's SR and overlay at the destination by C-STORE, retrying with
backoff and keeping them until they are sent. Other modalities and lateral films are
acknowledged and skipped with a log line; a film that cannot be read is kept in ``failed/``.
Logs name films by their spool key (a hash), never by a patient identifier.

>>> node = Node("model.safetensors", NodeConfig("CARDIO", 11112, Destination.parse(
...     "PACS@127.0.0.1:4242"), "spool"))                                      # doctest: +SKIP
>>> node.start(); ...; node.stop()                                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from ..errors import ImageError, UserError
from ..predict import Classifier
from .results import ResultWriter, dicom_header
from .spool import Spool, film_key

log = logging.getLogger(__name__)

#: What modalities send chest films in: uncompressed, JPEG lossless, JPEG 2000, RLE, JPEG.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGBaseline8Bit,
]
#: The films it scores; every other storage class is acknowledged and skipped.
CHEST_FILMS = {ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
               DigitalXRayImageStorageForProcessing}  # fmt: skip
FRONTAL = {"PA", "AP"}
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
_OK_STORE = {0x0000, 0xB000, 0xB006, 0xB007}  # success, or success with a warning


@dataclass(frozen=True)
class Destination:
    """Where results go: ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``PACS@10.0.0.5:4242``; anything else is a UserError saying the form.

        >>> Destination.parse("ORTHANC@127.0.0.1:4242")
        Destination(aet='ORTHANC', host='127.0.0.1', port=4242)
        """
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", text.strip())
        if not match or not 0 < int(match.group(3)) < 65536:
            raise UserError(f"--dest {text}: give AET@HOST:PORT, such as PACS@10.0.0.5:4242")
        return cls(match.group(1), match.group(2), int(match.group(3)))


@dataclass
class NodeConfig:
    """How the node listens, where it sends, and where it keeps what it was given."""

    aet: str
    port: int
    dest: Destination
    spool: str | Path
    host: str = "127.0.0.1"
    allow: list[str] = field(default_factory=list)  # calling AE titles; empty: any
    max_retry_wait: float = 300.0  # seconds between attempts to send, at most

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\x21-\x7e ]{1,16}", self.aet) or not self.aet.strip():
            raise UserError(f"--aet {self.aet!r}: 1 to 16 printable characters, such as CARDIO")


class Node:
    """The listening node: a server thread (pynetdicom), a worker and a sender."""

    def __init__(
        self,
        model: str | Path,
        config: NodeConfig,
        ctr_model: str | Path | None = None,
        device: str = "auto",
    ) -> None:
        self.config = config
        self.clf = Classifier.load(model, device=device)
        measurer = None
        if ctr_model is not None:
            from ..segment.measure import Measurer

            measurer = Measurer.load(ctr_model, device=device)
        self.writer = ResultWriter(model, self.clf, measurer, device)
        self.spool = Spool(config.spool)
        self._wake_worker, self._wake_sender = threading.Event(), threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.counts = {"received": 0, "scored": 0, "skipped": 0, "failed": 0, "sent": 0}

    # ------------------------------------------------------------------------------ running

    def start(self) -> None:
        """Recover the spool, start listening, scoring and sending (returns at once)."""
        lost = self.spool.recover()
        if lost:
            log.info("spool: %d partly received films removed (never acknowledged)", lost)
        queued, waiting = len(self.spool.queued()), self.spool.waiting()
        if queued or waiting:
            log.info("spool: %d films to score and %d results to send from before", queued,
                     waiting)  # fmt: skip
        ae = AE(ae_title=self.config.aet)
        ae.require_calling_aet = list(self.config.allow)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda _e: SUCCESS)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False,
                                       evt_handlers=handlers)  # fmt: skip
        for target, name in ((self._work, "score"), (self._send, "send")):
            thread = threading.Thread(target=self._keep_running, args=(target,),
                                      name=f"cardiomegaly-{name}", daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        log.info("listening as %s on %s:%d; results to %s@%s:%d; spool %s", self.config.aet,
                 self.config.host, self.config.port, self.config.dest.aet, self.config.dest.host,
                 self.config.dest.port, self.config.spool)  # fmt: skip

    def stop(self) -> None:
        """Stop listening, let the film being scored finish, stop (the spool keeps the rest)."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._wake_worker.set()
        self._wake_sender.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _keep_running(self, loop) -> None:
        """Run a loop until stop; an unexpected error is logged and the loop starts again (the
        spool still holds the film or the result it was working on)."""
        while not self._stop.is_set():
            try:
                loop()
            except Exception:
                log.exception("internal error in %s; going on in 5 s", loop.__name__)
                self._stop.wait(5)

    # ---------------------------------------------------------------------------- receiving

    def _on_store(self, event) -> int:
        sop_class = event.request.AffectedSOPClassUID
        key = film_key(event.request.AffectedSOPInstanceUID)
        if sop_class not in CHEST_FILMS:
            log.info("skipped     %s: %s is not a chest film this node scores (CR or DX)", key,
                     sop_class.name)  # fmt: skip
            self.counts["skipped"] += 1
            return SUCCESS  # acknowledged: the PACS need not send it again
        try:
            self.spool.accept(event.request.AffectedSOPInstanceUID, event.encoded_dataset())
        except OSError as exc:  # a full disk: the sender keeps the film and tries again
            log.error("cannot keep %s in the spool (%s): answered 'out of resources'", key, exc)
            return OUT_OF_RESOURCES
        self.counts["received"] += 1
        self._wake_worker.set()
        return SUCCESS

    # ------------------------------------------------------------------------------ scoring

    def _work(self) -> None:
        while not self._stop.is_set():
            for path in self.spool.queued():
                if self._stop.is_set():
                    return
                self._score(path)
            self._wake_worker.wait(timeout=1.0)
            self._wake_worker.clear()

    def _score(self, path: Path) -> None:
        key = path.stem
        if self.spool.is_done(key):
            log.info("duplicate   %s: received again after it was scored; not scored twice", key)
            self.spool.drop(key)
            return
        header = dicom_header(path)
        if header is None:
            self._fail(key, "not a readable DICOM file")
            return
        view = str(header.get("ViewPosition", "") or "").upper().strip()
        if view and view not in FRONTAL:
            log.info("skipped     %s: view %s is not frontal (PA or AP)", key, view)
            self.counts["skipped"] += 1
            self.spool.skip(key)
            return
        try:
            prediction = self.clf.predict(path)
            results = self.writer.objects(path, prediction)
        except ImageError as exc:
            self._fail(key, str(exc).replace(str(path), key))
            return
        self.spool.finish(key, results)
        self.counts["scored"] += 1
        log.info("scored      %s: probability %.3f (%s)", key, prediction.probability,
                 "cardiomegaly" if prediction.label else "no cardiomegaly")  # fmt: skip
        self._wake_sender.set()

    def _fail(self, key: str, reason: str) -> None:
        log.warning("failed      %s: %s; kept in %s", key, reason, self.spool.root / "failed")
        self.counts["failed"] += 1
        self.spool.quarantine(key, reason)

    # ------------------------------------------------------------------------------ sending

    def _send(self) -> None:
        ae = AE(ae_title=self.config.aet)
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class, syntaxes)
        while not self._stop.is_set():
            for entry in self.spool.outbox():
                if self._stop.is_set():
                    return
                self._send_one(ae, entry)
            self._wake_sender.wait(timeout=1.0)
            self._wake_sender.clear()

    def _send_one(self, ae: AE, entry: Path) -> None:
        dest = self.config.dest
        reason = None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
        if not assoc.is_established:
            reason = f"no association with {dest.aet}@{dest.host}:{dest.port}"
        else:
            try:
                for path in sorted(entry.glob("*.dcm")):
                    status = assoc.send_c_store(path)
                    code = getattr(status, "Status", None)
                    if code not in _OK_STORE:
                        reason = f"C-STORE answered {code!r}"
                        break
            finally:
                assoc.release()
        if reason is None:
            self.spool.sent(entry)
            self.counts["sent"] += 1
            log.info("sent        %s: SR and overlay to %s", entry.name, dest.aet)
            return
        wait = self.spool.failed_to_send(entry, reason, self.config.max_retry_wait)
        log.warning("not sent    %s: %s; next try in %.0f s", entry.name, reason, wait)
