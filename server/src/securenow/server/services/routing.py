"""Which agency an alert goes to.

1. The most specific active police jurisdiction (PostGIS) containing the alert, skipping
   agencies that already declined or let it time out.
2. Otherwise a security agency: first one run by a nearby on-duty provider (Redis
   GEOSEARCH over providers:locations), then the agency whose service area is nearest.
An alert whose point no police jurisdiction covers is flagged outside_jurisdiction.
"""

from __future__ import annotations

from dataclasses import dataclass

from securenow.server.domain.errors import Unavailable
from securenow.server.domain.geo import Point
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import UnitOfWork
from securenow.server.storage.sos_repo import AgencyChoice

NEARBY_PROVIDER_RADIUS_M = 50_000.0


@dataclass(frozen=True)
class Route:
    agency: AgencyChoice | None
    outside_jurisdiction: bool


class Router:
    def __init__(self, live: LiveState) -> None:
        self._live = live

    async def choose(self, uow: UnitOfWork, point: Point | None, passed: list[str]) -> Route:
        covered = False
        if point is not None:
            police = await uow.sos.police_for_point(point, passed)
            if police is not None:
                return Route(police, False)
            covered = await uow.sos.any_police_covers(point)
            try:
                hits = await self._live.nearby_providers(point, NEARBY_PROVIDER_RADIUS_M, 20)
            except Unavailable:
                hits = []  # Redis down: fall back to the nearest service area
            if hits:
                linked = await uow.sos.agencies_of_providers([h.provider_id for h in hits], passed)
                for hit in hits:
                    if hit.provider_id in linked:
                        return Route(linked[hit.provider_id], not covered)
        agency = await uow.sos.nearest_security_agency(point, passed)
        return Route(agency, not covered)
