"""Progress of a case: one line per stage, and window batches as a tqdm bar on a terminal
or as log lines (every tenth of the windows) otherwise.

The engine reports each finished window batch to `window_progress` (a context variable,
so only the caller that set it hears about its own windows).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

log = logging.getLogger(__name__)

window_progress: ContextVar[Callable[[int, int], None] | None] = ContextVar(
    "window_progress", default=None)
"""Called by the engine as `(windows done, windows planned)` after every window batch."""


class CaseProgress:
    """Progress of one case named `name`.

    Args:
        name: the case's output name, shown in every line.
        stream: where a bar goes (default stderr); a bar only when it is a terminal.
    """

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._logged_tenth = -1

    def stage(self, text: str) -> None:
        """Announce a stage ("reading", "preprocessing", ...)."""
        self.close()
        log.info("case %s: %s", self.name, text)

    def windows(self, done: int, total: int) -> None:
        """`done` of `total` windows computed (all folds and flips of them)."""
        if self.tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=f"case {self.name}", unit="window",
                                 file=self.stream, leave=False, mininterval=0)
            self._bar.total = total
            self._bar.update(done - self._bar.n)
            return
        tenth = 10 * done // max(total, 1)
        if tenth > self._logged_tenth:
            self._logged_tenth = tenth
            log.info("case %s: %d of %d windows (%d%%)", self.name, done, total,
                     100 * done // max(total, 1))

    def close(self) -> None:
        """End a bar in progress."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._logged_tenth = -1

    @contextlib.contextmanager
    def listening(self) -> Iterator[CaseProgress]:
        """Receive the engine's window batches while the block runs."""
        token = window_progress.set(self.windows)
        try:
            yield self
        finally:
            window_progress.reset(token)
            self.close()


def _duration(seconds: float) -> str:
    """'42 s', '7 min', '3 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class FolderProgress:
    """Progress of a folder of cases, a line per finished case: cases done of the total,
    cases per hour so far and the time left at that rate.

    Args:
        total: cases this run computes.
        clock: seconds, monotonic (the rate counts from construction).
    """

    def __init__(self, total: int, clock: Callable[[], float] | None = None) -> None:
        import time

        self.total = total
        self.done = 0
        self.failed = 0
        self._clock = clock or time.monotonic
        self._start = self._clock()

    def case_done(self, failed: bool = False) -> str:
        """Count a finished case; returns the progress line."""
        self.done += 1
        self.failed += int(failed)
        elapsed = max(self._clock() - self._start, 1e-9)
        per_hour = 3600.0 * self.done / elapsed
        left = (self.total - self.done) * elapsed / self.done
        line = (f"{self.done} of {self.total} case(s) done ({self.failed} failed), "
                f"{per_hour:.1f} cases/h, about {_duration(left)} left")
        return line
