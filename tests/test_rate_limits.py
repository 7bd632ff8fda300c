"""Per-caller rate limits (the seed's rate_limit:{user_id}:{action}) on what is costly
to answer or to create: searches and safety-score lookups share one budget, new
bookings have their own. Past the limit a call is RESOURCE_EXHAUSTED with a retry
delay; other callers, other classes of call and the SOS path are unaffected."""

from __future__ import annotations

import uuid

import grpc
from prometheus_client import REGISTRY

from securenow.v1 import analytics_pb2, common_pb2, search_pb2
from tests.conftest import extra_replica
from tests.dispatch_helpers import SF, raise_sos
from tests.helpers import Api, expect_error
from tests.test_bookings import booking_request, hour


def rate_limited(action: str) -> float:
    return REGISTRY.get_sample_value("securenow_rate_limited_total", {"action": action}) or 0.0


async def test_lookups_and_bookings_are_limited_per_caller_and_sos_never(api: Api) -> None:
    admin = await api.admin()
    _, provider = await api.verified_provider(admin)
    person, neighbour = await api.sign_up(), await api.sign_up()
    async with (
        extra_replica("few-lookups", lookup_calls_per_minute=3, booking_calls_per_minute=2) as rt,
        grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel,
    ):
        limited = Api(channel, api.app)
        score = analytics_pb2.GetSafetyScoreRequest(location=common_pb2.LatLng(latitude=SF[0], longitude=SF[1]))
        search = search_pb2.SearchProvidersRequest(query="guards")
        refused_before = rate_limited("lookup")

        await limited.analytics.GetSafetyScore(score, metadata=person.md)
        await limited.search.SearchProviders(search, metadata=person.md)
        await limited.analytics.GetSafetyScore(score, metadata=person.md)
        err = await expect_error(
            limited.search.SearchProviders(search, metadata=person.md), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert err.retry_delay_seconds is not None
        assert 0 < err.retry_delay_seconds <= 60
        assert rate_limited("lookup") == refused_before + 1
        # Another caller has a budget of their own.
        await limited.analytics.GetSafetyScore(score, metadata=neighbour.md)

        # Bookings are a budget apart: two new bookings, then refused.
        for n in range(2):
            await limited.bookings.CreateBooking(
                booking_request(provider.id, hour(10 + 4 * n), request_id=str(uuid.uuid4())), metadata=person.md
            )
        await expect_error(
            limited.bookings.CreateBooking(booking_request(provider.id, hour(30)), metadata=person.md),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )

        # The person is in trouble: nothing stands between them and an SOS.
        alert = await raise_sos(limited, person, SF)
        assert alert.status == common_pb2.SOS_STATUS_ACTIVE
