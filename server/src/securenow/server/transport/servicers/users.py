from __future__ import annotations

import grpc

from securenow.server.domain.enums import Role, UserStatus, VerificationStatus
from securenow.server.services.users import UserService
from securenow.server.transport import convert
from securenow.server.transport.context import current_principal
from securenow.v1 import users_pb2, users_pb2_grpc


class UserServicer(users_pb2_grpc.UserServiceServicer):
    def __init__(self, users: UserService) -> None:
        self._users = users

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.GetUserResponse:
        user = await self._users.get_user(current_principal(), request.user_id)
        return users_pb2.GetUserResponse(user=convert.user(user))

    async def UpdateUser(
        self, request: users_pb2.UpdateUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.UpdateUserResponse:
        u = request.user
        user = await self._users.update_user(
            current_principal(),
            u.id,
            list(request.update_mask.paths),
            first_name=u.first_name,
            last_name=u.last_name,
            phone=u.phone,
            emergency_contacts=convert.emergency_contacts_from_pb(u.emergency_contacts),
        )
        return users_pb2.UpdateUserResponse(user=convert.user(user))

    async def DeleteUser(
        self, request: users_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.DeleteUserResponse:
        user = await self._users.delete_user(current_principal(), request.user_id)
        return users_pb2.DeleteUserResponse(user=convert.user(user))

    async def SubmitKyc(
        self, request: users_pb2.SubmitKycRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.SubmitKycResponse:
        user = await self._users.submit_kyc(current_principal(), convert.kyc_from_pb(request.kyc))
        return users_pb2.SubmitKycResponse(user=convert.user(user))

    async def GetKyc(
        self, request: users_pb2.GetKycRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.GetKycResponse:
        data, submitted = await self._users.get_kyc(current_principal(), request.user_id)
        return users_pb2.GetKycResponse(kyc=convert.kyc(data), submit_time=convert.ts(submitted))

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.ListUsersResponse:
        users, token = await self._users.list_users(
            current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            role=convert.enum_from_pb(Role, request.role, "role"),
            status=convert.enum_from_pb(UserStatus, request.status, "status"),
            verification=convert.enum_from_pb(VerificationStatus, request.verification_status, "verification_status"),
        )
        return users_pb2.ListUsersResponse(users=[convert.user(u) for u in users], next_page_token=token)

    async def SuspendUser(
        self, request: users_pb2.SuspendUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.SuspendUserResponse:
        user = await self._users.suspend_user(current_principal(), request.user_id, request.reason)
        return users_pb2.SuspendUserResponse(user=convert.user(user))

    async def ReinstateUser(
        self, request: users_pb2.ReinstateUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.ReinstateUserResponse:
        user = await self._users.reinstate_user(current_principal(), request.user_id)
        return users_pb2.ReinstateUserResponse(user=convert.user(user))

    async def VerifyUser(
        self, request: users_pb2.VerifyUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.VerifyUserResponse:
        decision = convert.enum_from_pb(VerificationStatus, request.decision, "decision")
        reviewed = convert.from_ts(request, "kyc_submit_time")
        user = await self._users.verify_user(
            current_principal(), request.user_id, decision, request.note, reviewed_submit_time=reviewed
        )
        return users_pb2.VerifyUserResponse(user=convert.user(user))

    async def SetUserRole(
        self, request: users_pb2.SetUserRoleRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.SetUserRoleResponse:
        role = convert.enum_from_pb(Role, request.role, "role")
        user = await self._users.set_role(current_principal(), request.user_id, role, request.agency_id)
        return users_pb2.SetUserRoleResponse(user=convert.user(user))
