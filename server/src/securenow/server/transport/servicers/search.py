from __future__ import annotations

import grpc

from securenow.server.domain.enums import AlertPriority, IncidentStatus, IncidentType, ProviderType
from securenow.server.services.search import SearchService
from securenow.server.transport import convert, convert_sos
from securenow.server.transport.context import current_principal
from securenow.v1 import search_pb2, search_pb2_grpc


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, search: SearchService) -> None:
        self._search = search

    async def SearchProviders(
        self, request: search_pb2.SearchProvidersRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchProvidersResponse:
        results, token, total = await self._search.search_providers(
            current_principal(),
            text=request.query,
            near=convert.point_from_pb(request, "near"),
            radius_m=request.radius_m,
            business_types=convert.enum_list_from_pb(ProviderType, request.business_types, "business_types"),
            min_rating=request.min_rating,
            tags=list(request.tags),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return search_pb2.SearchProvidersResponse(
            results=[
                search_pb2.ProviderSearchResult(
                    provider=convert.provider(r.provider), score=r.score, distance_m=r.distance_m or 0.0
                )
                for r in results
            ],
            next_page_token=token,
            total_size=total,
        )

    async def SearchIncidents(
        self, request: search_pb2.SearchIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchIncidentsResponse:
        results, token, total = await self._search.search_incidents(
            current_principal(),
            text=request.query,
            incident_types=convert.enum_list_from_pb(IncidentType, request.incident_types, "incident_types"),
            statuses=convert.enum_list_from_pb(IncidentStatus, request.statuses, "statuses"),
            priorities=convert.enum_list_from_pb(AlertPriority, request.priorities, "priorities"),
            start=convert.from_ts(request, "start_time"),
            end=convert.from_ts(request, "end_time"),
            near=convert.point_from_pb(request, "near"),
            radius_m=request.radius_m,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return search_pb2.SearchIncidentsResponse(
            results=[
                search_pb2.IncidentSearchResult(
                    incident=convert_sos.incident(r.incident),
                    location=convert.lat_lng(r.alert.location.point if r.alert.location else None),
                    description=r.alert.description,
                    score=r.score,
                )
                for r in results
            ],
            next_page_token=token,
            total_size=total,
        )
