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
