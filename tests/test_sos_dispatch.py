"""SOS to CAD, end to end over real sockets: routing by jurisdiction, the dispatch
stream's delivery promise, commands, and what the person sees."""

from __future__ import annotations

import grpc

from securenow.v1 import agency_pb2, common_pb2, sos_pb2
from tests.dispatch_helpers import LA, SF, Cad, raise_sos, register_department
from tests.helpers import Api, expect_error


async def test_raised_sos_reaches_the_department_whose_jurisdiction_contains_it(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, person, SF, description="someone is following me")
        assert alert.status == common_pb2.SOS_STATUS_ACTIVE
        assert alert.priority == common_pb2.ALERT_PRIORITY_HIGH
        assert alert.assigned_agency_id == dept.id
        msg = await cad.next_event("alert_raised")
        raised = msg.alert_raised
        assert msg.event_id
        assert raised.alert.id == alert.id
        assert raised.alert.description == "someone is following me"
        assert abs(raised.alert.location.point.latitude - SF[0]) < 1e-9
        assert raised.incident.status == common_pb2.INCIDENT_STATUS_REPORTED
        assert raised.incident.police_department_id == dept.id
    finally:
        await cad.close()
