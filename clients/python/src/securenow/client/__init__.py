"""SecureNow Python SDK (asyncio, grpc.aio).

async with SecureNowClient("127.0.0.1:50051") as client:
    await client.sign_in(email=..., password=...)
    alert = await client.raise_sos(location=(37.77, -122.42), description="help")
    async for update in client.watch_sos(alert.id):
        print(update.event)
"""

from securenow.client.auth import Session
from securenow.client.client import SecureNowClient, make_location
from securenow.client.cursor import CursorFileError, CursorStore, FileCursorStore, MemoryCursorStore
from securenow.client.dispatch import DispatchConsumer
from securenow.client.errors import SecureNowError
from securenow.client.retry import RetryPolicy

__all__ = [
    "CursorFileError",
    "CursorStore",
    "DispatchConsumer",
    "FileCursorStore",
    "MemoryCursorStore",
    "RetryPolicy",
    "SecureNowClient",
    "SecureNowError",
    "Session",
    "make_location",
]
