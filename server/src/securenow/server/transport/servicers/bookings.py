from __future__ import annotations

import grpc

from securenow.server.domain.enums import BookingStatus, PaymentStatus
from securenow.server.services.bookings import BookingService
from securenow.server.transport import convert
from securenow.server.transport.context import current_principal
from securenow.v1 import bookings_pb2, bookings_pb2_grpc


class BookingServicer(bookings_pb2_grpc.BookingServiceServicer):
    def __init__(self, bookings: BookingService) -> None:
        self._bookings = bookings

    async def CreateBooking(
        self, request: bookings_pb2.CreateBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.CreateBookingResponse:
        key = convert.idempotency_key(request)
        booking = await self._bookings.create(current_principal(), convert.booking_request(request), key)
        return bookings_pb2.CreateBookingResponse(booking=convert.booking(booking))

    async def GetBooking(
        self, request: bookings_pb2.GetBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.GetBookingResponse:
        booking = await self._bookings.get(current_principal(), request.booking_id)
        return bookings_pb2.GetBookingResponse(booking=convert.booking(booking))

    async def ListBookings(
        self, request: bookings_pb2.ListBookingsRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.ListBookingsResponse:
        bookings, token = await self._bookings.list_bookings(
            current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            provider_id=request.provider_id,
            status=convert.enum_from_pb(BookingStatus, request.status, "status"),
        )
        return bookings_pb2.ListBookingsResponse(bookings=[convert.booking(b) for b in bookings], next_page_token=token)

    async def ConfirmBooking(
        self, request: bookings_pb2.ConfirmBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.ConfirmBookingResponse:
        booking = await self._bookings.confirm(current_principal(), request.booking_id)
        return bookings_pb2.ConfirmBookingResponse(booking=convert.booking(booking))

    async def StartBooking(
        self, request: bookings_pb2.StartBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.StartBookingResponse:
        booking = await self._bookings.start(current_principal(), request.booking_id)
        return bookings_pb2.StartBookingResponse(booking=convert.booking(booking))

    async def CompleteBooking(
        self, request: bookings_pb2.CompleteBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.CompleteBookingResponse:
        booking = await self._bookings.complete(current_principal(), request.booking_id)
        return bookings_pb2.CompleteBookingResponse(booking=convert.booking(booking))

    async def CancelBooking(
        self, request: bookings_pb2.CancelBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.CancelBookingResponse:
        booking = await self._bookings.cancel(current_principal(), request.booking_id, request.reason)
        return bookings_pb2.CancelBookingResponse(booking=convert.booking(booking))

    async def UpdateBookingPaymentStatus(
        self, request: bookings_pb2.UpdateBookingPaymentStatusRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.UpdateBookingPaymentStatusResponse:
        status = convert.enum_from_pb(PaymentStatus, request.payment_status, "payment_status")
        booking = await self._bookings.update_payment_status(current_principal(), request.booking_id, status)
        return bookings_pb2.UpdateBookingPaymentStatusResponse(booking=convert.booking(booking))

    async def ReviewBooking(
        self, request: bookings_pb2.ReviewBookingRequest, context: grpc.aio.ServicerContext
    ) -> bookings_pb2.ReviewBookingResponse:
        booking = await self._bookings.review(current_principal(), request.booking_id, request.rating, request.review)
        return bookings_pb2.ReviewBookingResponse(booking=convert.booking(booking))
