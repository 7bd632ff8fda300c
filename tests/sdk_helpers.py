"""Helpers for the SDK and CAD connector tests: a TCP proxy that can break
connections on purpose (real sockets, no mocks), subprocess line readers, and the
reference CAD connector run as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the server. `drop_next_response()` makes the
    proxy cut the connection that carries the next response (the first HTTP/2
    HEADERS frame on a stream, server to client) without forwarding it: the server
    has handled the call, the client never hears back. `kill_connections()` cuts
    every open connection. With `tls`, the proxy terminates TLS (ALPN h2) in front
    of the plaintext server."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None) -> None:
        self._target = (target_host, target_port)
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drop_armed = False
        self.connections = 0
        self.dropped_responses = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.kill_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def drop_next_response(self) -> None:
        self._drop_armed = True

    def kill_connections(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        link = (client_writer, up_writer)
        self._links.add(link)
        for pump in (self._copy(client_reader, up_writer, link), self._frames(up_reader, client_writer, link)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _cut(self, link: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        for writer in link:
            writer.transport.abort()
        self._links.discard(link)

    async def _copy(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        self._cut(link)

    async def _frames(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        """Server to client, frame by frame (HTTP/2 frame header: 24-bit length,
        type, flags, 31-bit stream id)."""
        buffer = b""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                buffer += data
                out = b""
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[0:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    frame_type = buffer[3]
                    stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    if self._drop_armed and frame_type == 0x1 and stream_id != 0:
                        self._drop_armed = False
                        self.dropped_responses += 1
                        if out:
                            writer.write(out)
                        self._cut(link)
                        return
                    out += buffer[: 9 + length]
                    buffer = buffer[9 + length :]
                if out:
                    writer.write(out)
                    await writer.drain()
        self._cut(link)


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A "host:port" that accepts TCP connections and never answers: calls to it hang
    until their deadline (a stalled server, not a refused connection)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


class LineReader:
    """Reads a subprocess's output lines with deadlines, keeping what it read."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self.lines: list[str] = []

    async def until(self, predicate: object, *, within: float = 15.0, what: str = "") -> str:
        """Reads lines until one satisfies `predicate` (a callable on the line, or a
        substring); returns it. Fails after `within` seconds or at end of output."""
        check = predicate if callable(predicate) else (lambda line: str(predicate) in line)
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or predicate!r}; output so far: {self.lines}")
            try:
                raw = await asyncio.wait_for(self._stream.readline(), left)
            except TimeoutError:
                continue
            if not raw:
                raise AssertionError(f"output ended before {what or predicate!r}; output: {self.lines}")
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if check(line):
                return line


def self_signed_tls() -> tuple[bytes, ssl.SSLContext]:
    """A certificate for 127.0.0.1/localhost (PEM, for the client to trust) and a
    server SSLContext using it, speaking HTTP/2."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return cert_pem, context


# The reference CAD connector (securenow-cad) as a subprocess ----------------------------

SCRIPT = Path(sys.executable).with_name("securenow-cad")


def connector_command(*args: str, module: bool = False) -> list[str]:
    if module or not SCRIPT.exists():
        return [sys.executable, "-m", "securenow.client.cad_connector", *args]
    return [str(SCRIPT), *args]


class Connector:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.out = LineReader(proc.stdout)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def exit_code(self, within: float = 15.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), within)

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


@asynccontextmanager
async def connector(
    args: Sequence[str], *, env: dict[str, str] | None = None, module: bool = False
) -> AsyncIterator[Connector]:
    environment = {k: v for k, v in os.environ.items() if k != "SECURENOW_API_KEY"}
    environment.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *connector_command(*args, module=module),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        yield Connector(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
