"""The escalation sweeper: any replica escalates alerts whose acknowledgement deadline
(sos_alerts.escalate_at, a column, so it survives restarts) has passed."""

from __future__ import annotations

import asyncio
import logging

from securenow.server.domain.errors import Unavailable
from securenow.server.services.dispatch import DispatchService

log = logging.getLogger(__name__)


async def run_escalations(dispatch: DispatchService, stop: asyncio.Event, interval: float = 0.5) -> None:
    while not stop.is_set():
        try:
            while await dispatch.escalate_due() > 0 and not stop.is_set():
                pass
        except Unavailable as exc:
            log.warning("escalation sweep: %s", exc)
        except Exception:
            log.exception("escalation sweep failed")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
