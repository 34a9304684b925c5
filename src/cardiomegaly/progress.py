"""Progress: a bar on a terminal; elsewhere (a log file, CI, a pipe) a log line now and then.

A log file of a long run reads line by line: no carriage-return frames of a bar. Off a terminal
:func:`progress_bar` logs one line per ``every`` items and one at the end (``every=0``: none, for
loops whose caller logs its own summary, like training's line per epoch).

>>> list(progress_bar(range(3), desc="demo", enabled=False))
[0, 1, 2]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("cardiomegaly")

#: Off a terminal, one log line per this many films.
EVERY = 1000


def on_terminal() -> bool:
    """Whether progress bars can be drawn: standard error is an interactive terminal."""
    return sys.stderr.isatty()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "img",
    every: int = EVERY,
    enabled: bool = True,
) -> Any:
    """A tqdm bar on a terminal, else a :class:`LogProgress`; both iterate and ``update``."""
    if enabled and on_terminal():
        # Plain tqdm: tqdm.auto's asyncio variant starts an extra iterator over a DataLoader,
        # drawing from its generator, so a run's batches would differ on and off a terminal.
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, every=every if enabled else 0)


class LogProgress:
    """The tqdm calls the package uses (iterate, ``update``, ``set_postfix``, ``close``), written
    as a log line every ``every`` units and once at the end."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="img", every=EVERY) -> None:
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else _len(iterable)
        self.n = 0
        self._logged = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every and self.n - self._logged >= self.every:
            self._log()

    def set_postfix(self, **_: Any) -> None:
        """Bars show running figures; a log gets them from its caller's own summary line."""

    def close(self) -> None:
        if self.every and self.n != self._logged:
            self._log()
        self._logged = self.n

    def _log(self) -> None:
        self._logged = self.n
        of = f" of {self.total}" if self.total is not None else ""
        log.info("%s: %d%s %s", self.desc, self.n, of, self.unit)


def _len(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None
