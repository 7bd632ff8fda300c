#!/usr/bin/env python3
"""Raise an SOS as the demo user and watch help come (the second terminal of the
README demo). Uses only the generated stubs.

usage: raise_sos.py [--server 127.0.0.1:50051] [--lat 37.7793 --lng -122.4193]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import grpc

from securenow.v1 import auth_pb2, auth_pb2_grpc, common_pb2, sos_pb2, sos_pb2_grpc


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--email", default="alice@securenow.local")
    parser.add_argument("--password", default="SecureNow-demo-1")
    parser.add_argument("--lat", type=float, default=37.7793)
    parser.add_argument("--lng", type=float, default=-122.4193)
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.server) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        session = await auth.SignIn(auth_pb2.SignInRequest(email=args.email, password=args.password))
        md = (("authorization", f"Bearer {session.access_token}"),)
        sos = sos_pb2_grpc.SosServiceStub(channel)
        raised = await sos.RaiseSos(
            sos_pb2.RaiseSosRequest(
                request_id=str(uuid.uuid4()),  # reuse it when retrying: the server returns the same alert
                location=common_pb2.Location(
                    point=common_pb2.LatLng(latitude=args.lat, longitude=args.lng), accuracy_m=10
                ),
                description="Someone is following me",
                incident_type=common_pb2.INCIDENT_TYPE_ASSAULT,
            ),
            metadata=md,
        )
        print(f"SOS raised: {raised.alert.id}, assigned to agency {raised.alert.assigned_agency_id or '(none yet)'}")
        async for update in sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=raised.alert.id), metadata=md):
            incident = update.incident
            print(
                f"[{update.event}] alert {common_pb2.SosStatus.Name(update.alert.status)}"
                f" incident {common_pb2.IncidentStatus.Name(incident.status) if incident.id else '-'}"
                f" unit {incident.assigned_unit or '-'} eta {incident.estimated_arrival_minutes or '-'} min"
            )


if __name__ == "__main__":
    asyncio.run(main())
