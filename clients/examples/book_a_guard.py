#!/usr/bin/env python3
"""The marketplace end to end with the Python SDK: a security company signs up and
registers, the demo admin verifies it, it goes on duty, a customer finds it nearby and
books it, and the company confirms. Runs against `make run` (demo admin account).

usage: book_a_guard.py [--server 127.0.0.1:50051]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import grpc

from securenow.client import SecureNowClient, SecureNowError
from securenow.v1 import bookings_pb2, common_pb2, providers_pb2, users_pb2

PASSWORD = "Correct-Horse-9"
# Union Square, San Francisco.
HERE = common_pb2.LatLng(latitude=37.7880, longitude=-122.4075)


def phone() -> str:
    return f"+1555{random.randrange(10**7):07d}"


def email(who: str) -> str:
    return f"{who}-{uuid.uuid4().hex[:8]}@example.com"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--admin-email", default="admin@securenow.local")
    parser.add_argument("--admin-password", default="SecureNow-demo-1")
    args = parser.parse_args()

    async with (
        SecureNowClient(args.server) as company,
        SecureNowClient(args.server) as admin,
        SecureNowClient(args.server) as customer,
    ):
        # 1. A security company signs up with the provider role and registers.
        await company.sign_up(
            email=email("guards"),
            phone=phone(),
            password=PASSWORD,
            first_name="Gale",
            last_name="Guard",
            role=users_pb2.USER_ROLE_PROVIDER,
        )
        created = await company.providers.CreateProvider(
            providers_pb2.CreateProviderRequest(
                request_id=str(uuid.uuid4()),
                provider=providers_pb2.Provider(
                    company_name="Union Square Patrol",
                    business_type=providers_pb2.PROVIDER_TYPE_SECURITY_GUARD,
                    license_number="CA-PPO-555001",
                    pricing=providers_pb2.Pricing(
                        rates=[
                            providers_pb2.ServiceRate(
                                service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD,
                                hourly_rate=common_pb2.Money(currency_code="USD", units=50),
                            )
                        ],
                        minimum_hours=2,
                    ),
                ),
            )
        )
        provider = created.provider
        print("registered", provider.company_name, common_pb2.VerificationStatus.Name(provider.verification_status))

        # 2. An admin verifies it; only verified providers can go on duty and be booked.
        await admin.sign_in(email=args.admin_email, password=args.admin_password)
        verified = await admin.providers.VerifyProvider(
            providers_pb2.VerifyProviderRequest(
                provider_id=provider.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED, note="license checked"
            )
        )
        print("verified", common_pb2.VerificationStatus.Name(verified.provider.verification_status))

        # 3. On duty at Union Square: its live position goes to providers:locations.
        await company.providers.UpdateProviderDuty(
            providers_pb2.UpdateProviderDutyRequest(
                provider_id=provider.id, on_duty=True, location=common_pb2.Location(point=HERE, accuracy_m=10)
            )
        )

        # 4. A customer nearby finds it...
        await customer.sign_up(email=email("sam"), phone=phone(), password=PASSWORD, first_name="Sam", last_name="Lee")
        near = await customer.providers.SearchNearbyProviders(
            providers_pb2.SearchNearbyProvidersRequest(
                point=common_pb2.LatLng(latitude=37.7890, longitude=-122.4080), radius_m=1000
            )
        )
        hit = next(h for h in near.results if h.provider.id == provider.id)
        print(f"found {hit.provider.company_name} {round(hit.distance_m)} m away")

        # 5. ...and books three hours tomorrow evening; the price comes from the server.
        start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=18, minute=0, second=0, microsecond=0)
        booking_request = bookings_pb2.CreateBookingRequest(
            request_id=str(uuid.uuid4()),  # retry with the same id: never two bookings
            provider_id=provider.id,
            service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD,
            duration_hours=3,
            location=common_pb2.Location(point=HERE),
            special_instructions="Back entrance on Post St.",
        )
        booking_request.start_time.FromDatetime(start)
        booking = (await customer.bookings.CreateBooking(booking_request)).booking
        price = booking.total_price
        print(
            "booked",
            bookings_pb2.BookingStatus.Name(booking.status),
            f"{price.units}.{price.nanos // 10**7:02d}",
            price.currency_code,
        )

        # 6. The same slot cannot be sold twice.
        booking_request.request_id = str(uuid.uuid4())
        try:
            await customer.bookings.CreateBooking(booking_request)
        except grpc.aio.AioRpcError as exc:
            err = SecureNowError.from_rpc_error(exc)
            print("second booking:", err.code.name, err.reason)

        # 7. The company confirms.
        confirmed = await company.bookings.ConfirmBooking(bookings_pb2.ConfirmBookingRequest(booking_id=booking.id))
        print("company:", bookings_pb2.BookingStatus.Name(confirmed.booking.status))


if __name__ == "__main__":
    asyncio.run(main())
