"""Services whose contracts are complete but whose implementation comes with a later
capability. Their RPCs answer UNIMPLEMENTED (after authentication)."""

from __future__ import annotations

import grpc

from securenow.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)


def add_unimplemented_services(server: grpc.aio.Server) -> list[str]:
    search_pb2_grpc.add_SearchServiceServicer_to_server(search_pb2_grpc.SearchServiceServicer(), server)  # type: ignore[abstract]
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(analytics_pb2_grpc.AnalyticsServiceServicer(), server)  # type: ignore[abstract]
    return [
        search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
        analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
    ]
