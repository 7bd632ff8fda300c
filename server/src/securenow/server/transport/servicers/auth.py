from __future__ import annotations

import grpc

from securenow.server.domain.enums import Role
from securenow.server.services.auth import AuthService
from securenow.server.transport import convert
from securenow.server.transport.context import current_client_address, current_principal
from securenow.v1 import auth_pb2, auth_pb2_grpc


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, auth: AuthService) -> None:
        self._auth = auth

    async def SignUp(
        self, request: auth_pb2.SignUpRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignUpResponse:
        user, tokens = await self._auth.sign_up(
            email=request.email,
            phone=request.phone,
            first_name=request.first_name,
            last_name=request.last_name,
            password=request.password,
            role=convert.enum_from_pb(Role, request.role, "role"),
            key=convert.idempotency_key(request, secret_fields=("password",)),
            address=current_client_address(),
        )
        return auth_pb2.SignUpResponse(
            user=convert.user(user),
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            access_token_expire_time=convert.ts(tokens.access_token_expire_time),
        )

    async def SignIn(
        self, request: auth_pb2.SignInRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignInResponse:
        user, tokens = await self._auth.sign_in(
            email=request.email, phone=request.phone, password=request.password, address=current_client_address()
        )
        return auth_pb2.SignInResponse(
            user=convert.user(user),
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            access_token_expire_time=convert.ts(tokens.access_token_expire_time),
        )

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RefreshTokenResponse:
        tokens = await self._auth.refresh(request.refresh_token)
        return auth_pb2.RefreshTokenResponse(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            access_token_expire_time=convert.ts(tokens.access_token_expire_time),
        )

    async def SignOut(
        self, request: auth_pb2.SignOutRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignOutResponse:
        await self._auth.sign_out(current_principal())
        return auth_pb2.SignOutResponse()
