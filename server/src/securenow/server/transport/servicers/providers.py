from __future__ import annotations

import grpc

from securenow.server.domain.enums import ProviderType, ServiceType, VerificationStatus
from securenow.server.services.providers import ProviderService
from securenow.server.transport import convert
from securenow.server.transport.context import current_principal
from securenow.v1 import common_pb2, providers_pb2, providers_pb2_grpc


class ProviderServicer(providers_pb2_grpc.ProviderServiceServicer):
    def __init__(self, providers: ProviderService) -> None:
        self._providers = providers

    async def CreateProvider(
        self, request: providers_pb2.CreateProviderRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.CreateProviderResponse:
        provider = await self._providers.create(
            current_principal(), convert.provider_draft(request.provider), convert.idempotency_key(request)
        )
        return providers_pb2.CreateProviderResponse(provider=convert.provider(provider))

    async def GetProvider(
        self, request: providers_pb2.GetProviderRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.GetProviderResponse:
        provider = await self._providers.get(current_principal(), request.provider_id)
        return providers_pb2.GetProviderResponse(provider=convert.provider(provider))

    async def UpdateProvider(
        self, request: providers_pb2.UpdateProviderRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.UpdateProviderResponse:
        provider = await self._providers.update(
            current_principal(),
            request.provider.id,
            convert.provider_draft(request.provider),
            list(request.update_mask.paths),
        )
        return providers_pb2.UpdateProviderResponse(provider=convert.provider(provider))

    async def ListProviders(
        self, request: providers_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.ListProvidersResponse:
        providers, token = await self._providers.list_providers(
            current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            business_type=convert.enum_from_pb(ProviderType, request.business_type, "business_type"),
            verification=convert.enum_from_pb(VerificationStatus, request.verification_status, "verification_status"),
            service_type=convert.enum_from_pb(ServiceType, request.service_type, "service_type"),
            min_rating=request.min_rating,
        )
        return providers_pb2.ListProvidersResponse(
            providers=[convert.provider(p) for p in providers], next_page_token=token
        )

    async def VerifyProvider(
        self, request: providers_pb2.VerifyProviderRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.VerifyProviderResponse:
        decision = convert.enum_from_pb(VerificationStatus, request.decision, "decision")
        provider = await self._providers.verify(current_principal(), request.provider_id, decision, request.note)
        return providers_pb2.VerifyProviderResponse(provider=convert.provider(provider))

    async def UpdateProviderDuty(
        self, request: providers_pb2.UpdateProviderDutyRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.UpdateProviderDutyResponse:
        location = convert.location_input(request.location) if request.HasField("location") else None
        provider = await self._providers.update_duty(
            current_principal(), request.provider_id, request.on_duty, location
        )
        return providers_pb2.UpdateProviderDutyResponse(provider=convert.provider(provider))

    async def SearchNearbyProviders(
        self, request: providers_pb2.SearchNearbyProvidersRequest, context: grpc.aio.ServicerContext
    ) -> providers_pb2.SearchNearbyProvidersResponse:
        results = await self._providers.search_nearby(
            current_principal(),
            latitude=request.point.latitude,
            longitude=request.point.longitude,
            has_point=request.HasField("point"),
            radius_m=request.radius_m,
            business_type=convert.enum_from_pb(ProviderType, request.business_type, "business_type"),
            max_results=request.max_results,
        )
        return providers_pb2.SearchNearbyProvidersResponse(
            results=[
                providers_pb2.NearbyProvider(
                    provider=convert.provider(p),
                    distance_m=distance,
                    location=common_pb2.LatLng(latitude=lat, longitude=lng),
                )
                for p, distance, (lat, lng) in results
            ]
        )
