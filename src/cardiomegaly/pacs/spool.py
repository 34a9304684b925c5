"""The node's spool: a folder that loses nothing a PACS was told is safe.

    incoming/  files being received (never acknowledged; removed at start)
    queue/     acknowledged films, waiting to be scored
    outbox/    results waiting to be sent, one folder per film (with its retry state)
    failed/    films that could not be scored, kept for a person, with the reason beside them
    done/      one empty marker per film scored (so a film sent again is not scored twice)

A film is renamed into ``queue/`` (after fsync) before its C-STORE is answered. Scoring writes
the film's results into ``outbox/`` (a folder renamed into place), then its ``done/`` marker, then
removes it from ``queue/``: a kill at any point leaves the film either queued (scored again, to
the same name-based result UIDs) or done. Names are hashes of SOP Instance UIDs: the spool's
bookkeeping holds no patient identifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from pydicom import Dataset

log = logging.getLogger(__name__)

FOLDERS = ("incoming", "queue", "outbox", "failed", "done")


def film_key(sop_instance_uid: str) -> str:
    """The spool's name for a film: a hash of its SOP Instance UID.

    >>> film_key("1.2.3")
    'c47f5b18b8a430e698b9fe15'
    """
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:24]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool folder (created when missing); safe to use from several threads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def recover(self) -> int:
        """Remove what was being received when the node stopped (never acknowledged, so the
        sender sends it again); returns how many."""
        parts = list((self.root / "incoming").iterdir())
        for part in parts:
            shutil.rmtree(part) if part.is_dir() else part.unlink()
        return len(parts)

    def accept(self, sop_instance_uid: str, data: bytes) -> str:
        """Keep a received film (its encoded file) safely in ``queue/``; returns its key."""
        key = film_key(sop_instance_uid)
        part = self.root / "incoming" / f"{key}.{uuid.uuid4().hex}.part"
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, self.root / "queue" / f"{key}.dcm")
        _fsync_dir(self.root / "queue")
        return key

    def queued(self) -> list[Path]:
        """Films waiting to be scored, oldest first."""
        files = [p for p in (self.root / "queue").glob("*.dcm")]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def is_done(self, key: str) -> bool:
        return (self.root / "done" / key).exists()

    def finish(self, key: str, results: list[Dataset]) -> None:
        """A film scored: its results into ``outbox/``, then it is done and leaves the queue."""
        if results:
            staging = self.root / "incoming" / f"{key}.{uuid.uuid4().hex}.out"
            staging.mkdir()
            for ds in results:
                ds.save_as(staging / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            final = self.root / "outbox" / key
            if final.exists():  # scored before a kill, not yet sent: the same objects again
                shutil.rmtree(final)
            os.replace(staging, final)
            _fsync_dir(self.root / "outbox")
        self._mark_done(key)

    def skip(self, key: str) -> None:
        """A film that gets no result (a lateral film, say): done, out of the queue."""
        self._mark_done(key)

    def quarantine(self, key: str, reason: str) -> None:
        """A film that could not be scored: kept in ``failed/`` with the reason; done."""
        source = self.root / "queue" / f"{key}.dcm"
        if source.exists():
            os.replace(source, self.root / "failed" / f"{key}.dcm")
        (self.root / "failed" / f"{key}.txt").write_text(reason + "\n", encoding="utf-8")
        self._mark_done(key)

    def _mark_done(self, key: str) -> None:
        (self.root / "done" / key).touch()
        _fsync_dir(self.root / "done")
        (self.root / "queue" / f"{key}.dcm").unlink(missing_ok=True)

    def drop(self, key: str) -> None:
        """A film received again after it was scored: it leaves the queue unscored."""
        (self.root / "queue" / f"{key}.dcm").unlink(missing_ok=True)

    # -------------------------------------------------------------------------- the outbox

    def outbox(self) -> list[Path]:
        """Result folders waiting to be sent whose next attempt is due, oldest first."""
        now = time.time()
        entries = [p for p in (self.root / "outbox").iterdir() if p.is_dir()]
        due = [p for p in entries if self.retry_state(p).get("next", 0) <= now]
        return sorted(due, key=lambda p: p.stat().st_mtime_ns)

    def waiting(self) -> int:
        """How many result folders are waiting to be sent, due or not."""
        return sum(p.is_dir() for p in (self.root / "outbox").iterdir())

    @staticmethod
    def retry_state(entry: Path) -> dict[str, Any]:
        try:
            return json.loads((entry / "retry.json").read_text())
        except (OSError, ValueError):
            return {}

    def failed_to_send(self, entry: Path, reason: str, max_wait: float) -> float:
        """Record a failed attempt; the next waits twice as long (1 s, 2 s, ... ``max_wait``).
        Returns the wait."""
        state = self.retry_state(entry)
        attempts = int(state.get("attempts", 0)) + 1
        wait = min(max_wait, 2.0 ** (attempts - 1))
        state = {"attempts": attempts, "next": time.time() + wait, "reason": reason[:200]}
        (entry / "retry.json").write_text(json.dumps(state))
        return wait

    def sent(self, entry: Path) -> None:
        shutil.rmtree(entry)
