"""Leases: one token per connected viewer, its study kept until release or expiry.

`POST /claim` hands out a token (sent back as `X-Lease-Token`); at most `max_sessions` at
once (503 beyond). A lease expires when its viewer made no real request (an image, an
interaction) for `idle_timeout_s`, or sent nothing at all, heartbeats included, for
`liveness_timeout_s`; a request with an expired or unknown token is 410. A lease in the
middle of a request is never reaped. Releasing or reaping drops the study, its mask and
its network state (memory bounded by `max_sessions` studies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Iterator

from petseg.serve.lesions import LesionSession

log = logging.getLogger(__name__)


class LeaseGoneError(Exception):
    """The token is missing, unknown, released or expired (HTTP 410)."""


class ServerFullError(Exception):
    """Every lease is taken (HTTP 503)."""


@dataclasses.dataclass
class Lease:
    """One viewer's state: its study (None before `set_image`) and clocks (monotonic s)."""

    lesions: LesionSession | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    active_at: float = dataclasses.field(default_factory=time.monotonic)
    seen_at: float = dataclasses.field(default_factory=time.monotonic)
    busy: int = 0


class Leases:
    """The token -> `Lease` table, thread-safe."""

    def __init__(self, max_sessions: int, idle_timeout_s: float,
                 liveness_timeout_s: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.liveness_timeout_s = liveness_timeout_s
        self._table: dict[str, Lease] = {}
        self._mu = threading.Lock()

    def claim(self) -> str:
        with self._mu:
            if len(self._table) >= self.max_sessions:
                raise ServerFullError(f"server is at capacity ({self.max_sessions} session(s)); "
                                 "retry when a reader disconnects")
            token = secrets.token_hex(16)
            self._table[token] = Lease()
        log.info("lease claimed (%d/%d)", len(self._table), self.max_sessions)
        return token

    def get(self, token: str | None, active: bool = False) -> Lease:
        """The lease of `token`, marked seen (and active, for a real request)."""
        with self._mu:
            lease = self._table.get(token or "")
            if lease is None:
                raise LeaseGoneError("lease token missing" if not token
                                else "lease expired or unknown; reconnect")
            lease.seen_at = time.monotonic()
            if active:
                lease.active_at = lease.seen_at
        return lease

    @contextlib.contextmanager
    def using(self, token: str | None) -> Iterator[Lease]:
        """The lease of `token` for one real request: active, locked, never reaped meanwhile."""
        lease = self.get(token, active=True)
        with self._mu:
            lease.busy += 1
        try:
            with lease.lock:
                yield lease
        finally:
            with self._mu:
                lease.busy -= 1
                lease.active_at = time.monotonic()

    def peek(self, token: str | None) -> Lease:
        """The lease of `token` without touching its clocks."""
        with self._mu:
            lease = self._table.get(token or "")
        if lease is None:
            raise LeaseGoneError("lease expired or unknown; reconnect")
        return lease

    def studies(self) -> list[LesionSession]:
        """The studies the leases hold now."""
        with self._mu:
            return [lease.lesions for lease in self._table.values() if lease.lesions is not None]

    def release(self, token: str | None) -> bool:
        with self._mu:
            lease = self._table.pop(token or "", None)
        if lease is not None:
            lease.lesions = None
            log.info("lease released (%d/%d)", len(self._table), self.max_sessions)
        return lease is not None

    def remaining_s(self, lease: Lease) -> float:
        return max(0.0, self.idle_timeout_s - (time.monotonic() - lease.active_at))

    def sweep(self) -> int:
        """Drop the idle and the silent leases that are not in a request; how many."""
        now = time.monotonic()
        with self._mu:
            gone = [token for token, lease in self._table.items() if not lease.busy and (
                now - lease.seen_at > self.liveness_timeout_s
                or now - lease.active_at > self.idle_timeout_s)]
            for token in gone:
                self._table.pop(token).lesions = None
        if gone:
            log.info("%d lease(s) expired", len(gone))
        return len(gone)

    def clear(self) -> None:
        with self._mu:
            self._table.clear()
