"""Ends long-lived streams whose credential stopped being good.

A unary call is authenticated when it arrives; a WatchSos stream can stay open for
hours, so the credential it was opened with is checked again every few seconds: a
revoked API key or stopped department, a signed-out, revoked or expired session, a
suspended or deleted account. One query per kind of credential covers every open
stream of this process, however many there are.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.errors import DomainError, Unauthenticated, Unavailable
from securenow.server.storage.postgres import Database

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 2.0


@dataclass
class _Watcher:
    principal: Principal
    queue: asyncio.Queue[str]
    wake_with: str


class CredentialMonitor:
    def __init__(self, db: Database, *, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self._db = db
        self._interval = interval
        self._watchers: dict[int, _Watcher] = {}
        self._ids = itertools.count()
        self._ended: dict[int, DomainError] = {}

    def register(self, principal: Principal, queue: asyncio.Queue[str], wake_with: str) -> int:
        """Watches `principal`'s credential for a stream; when it ends, `wake_with` is put
        on `queue` and `problem(token)` says why."""
        token = next(self._ids)
        self._watchers[token] = _Watcher(principal, queue, wake_with)
        return token

    def unregister(self, token: int) -> None:
        self._watchers.pop(token, None)
        self._ended.pop(token, None)

    def problem(self, token: int) -> DomainError | None:
        return self._ended.get(token)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._interval)
            except TimeoutError:
                pass
            if stop.is_set() or not self._watchers:
                continue
            try:
                await self.check()
            except Unavailable as exc:
                log.warning("credential check skipped: %s", exc)  # streams keep their last verdict
            except Exception:
                log.exception("credential check failed")

    async def check(self) -> None:
        watchers = [(t, w) for t, w in self._watchers.items() if t not in self._ended]
        keys = {w.principal.id for _, w in watchers if w.principal.kind is PrincipalKind.API_KEY}
        sessions = {w.principal.session_id for _, w in watchers if w.principal.session_id is not None}
        if not keys and not sessions:
            return
        async with self._db.reader() as uow:
            dead_keys = set(await uow.agency.unusable_api_keys(sorted(keys))) if keys else set()
            dead_sessions = set(await uow.accounts.ended_sessions(sorted(sessions))) if sessions else set()
        for token, w in watchers:
            if w.principal.kind is PrincipalKind.API_KEY and w.principal.id in dead_keys:
                error = Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
            elif w.principal.session_id in dead_sessions:
                error = Unauthenticated("the session has ended; sign in again", reason="SESSION_ENDED")
            else:
                continue
            self._ended[token] = error
            try:
                w.queue.put_nowait(w.wake_with)
            except asyncio.QueueFull:
                pass  # a full queue wakes its reader anyway, which then sees the problem
