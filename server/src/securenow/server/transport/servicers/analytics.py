from __future__ import annotations

import grpc

from securenow.server.services.analytics import AnalyticsService
from securenow.server.transport import convert, convert_analytics
from securenow.server.transport.context import current_principal
from securenow.v1 import analytics_pb2, analytics_pb2_grpc


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, analytics: AnalyticsService) -> None:
        self._analytics = analytics

    async def RecordEvents(
        self, request: analytics_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.RecordEventsResponse:
        accepted = await self._analytics.record_events(
            current_principal(),
            [convert_analytics.event_input(i, e) for i, e in enumerate(request.events)],
            convert.idempotency_key(request),
        )
        return analytics_pb2.RecordEventsResponse(accepted_count=accepted)

    async def GetSafetyScore(
        self, request: analytics_pb2.GetSafetyScoreRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetSafetyScoreResponse:
        score = await self._analytics.get_safety_score(
            current_principal(), convert_analytics.point(request, "location")
        )
        return analytics_pb2.GetSafetyScoreResponse(safety_score=convert_analytics.safety_score(score))

    async def ListSafetyScores(
        self, request: analytics_pb2.ListSafetyScoresRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.ListSafetyScoresResponse:
        scores, token = await self._analytics.list_safety_scores(
            current_principal(),
            convert_analytics.point(request, "near"),
            request.radius_m,
            request.page_size,
            request.page_token,
        )
        return analytics_pb2.ListSafetyScoresResponse(
            safety_scores=[convert_analytics.safety_score(s) for s in scores], next_page_token=token
        )

    async def GetIncidentReport(
        self, request: analytics_pb2.GetIncidentReportRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetIncidentReportResponse:
        buckets = await self._analytics.incident_report(
            current_principal(),
            request.department_id,
            convert_analytics.timestamp(request, "start_time", "start_time"),
            convert_analytics.timestamp(request, "end_time", "end_time"),
            convert.from_duration(request, "interval"),
        )
        return analytics_pb2.GetIncidentReportResponse(buckets=[convert_analytics.report_bucket(b) for b in buckets])
