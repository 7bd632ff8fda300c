"""Services whose contracts are complete but whose implementation comes with a later
capability. Their RPCs answer UNIMPLEMENTED (after authentication)."""

from __future__ import annotations

import grpc

from securenow.v1 import (
    agency_pb2,
    agency_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    sos_pb2,
    sos_pb2_grpc,
)


def add_unimplemented_services(server: grpc.aio.Server) -> list[str]:
    sos_pb2_grpc.add_SosServiceServicer_to_server(sos_pb2_grpc.SosServiceServicer(), server)  # type: ignore[abstract]
    agency_pb2_grpc.add_AgencyServiceServicer_to_server(agency_pb2_grpc.AgencyServiceServicer(), server)  # type: ignore[abstract]
    search_pb2_grpc.add_SearchServiceServicer_to_server(search_pb2_grpc.SearchServiceServicer(), server)  # type: ignore[abstract]
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(analytics_pb2_grpc.AnalyticsServiceServicer(), server)  # type: ignore[abstract]
    return [
        sos_pb2.DESCRIPTOR.services_by_name["SosService"].full_name,
        agency_pb2.DESCRIPTOR.services_by_name["AgencyService"].full_name,
        search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
        analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
    ]
