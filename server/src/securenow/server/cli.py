"""`securenow` command line: migrate, serve, work, create-admin, seed-demo, maintain."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from securenow.server import logs, migrations
from securenow.server.domain.errors import DomainError
from securenow.server.settings import Settings, SettingsError

log = logging.getLogger("securenow")


def _settings() -> Settings:
    try:
        return Settings()
    except (SettingsError, ValidationError) as exc:
        sys.exit(f"securenow: bad settings: {exc}")


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.status:
        for m in migrations.status(settings.database_url):
            print(f"{'applied' if m.applied else 'pending':8} {m.id}")
        return 0
    if args.down is not None or args.down_all:
        done = migrations.rollback(settings.database_url, steps=None if args.down_all else args.down)
        print(f"rolled back {len(done)} migration(s)" + "".join(f"\n  {m}" for m in done))
        return 0
    done = migrations.apply(settings.database_url)
    print(f"applied {len(done)} migration(s)" + "".join(f"\n  {m}" for m in done))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    logs.configure(settings.log_level)
    if settings.processes > 1:
        from securenow.server.supervisor import supervise

        if settings.grpc_addr.endswith(":0") or settings.http_addr.endswith(":0"):
            sys.exit("securenow serve: several processes need fixed ports (not :0)")
        return supervise(settings.processes)
    from securenow.server.runtime import serve

    _run(serve(settings))
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    from securenow.server.runtime import work

    settings = _settings()
    logs.configure(settings.log_level)
    _run(work(settings))
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    from securenow.server.bootstrap import App

    settings = _settings()

    async def main() -> None:
        app = await App.create(settings)
        try:
            user = await app.auth.create_admin(
                email=args.email,
                password=args.password,
                phone=args.phone,
                first_name=args.first_name,
                last_name=args.last_name,
            )
        finally:
            await app.close()
        print(f"admin {user.email} ({user.id}) is ready")

    _run(main())
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from securenow.server.bootstrap import App
    from securenow.server.demo import DemoData, seed_demo

    settings = _settings()
    key_file = Path(args.api_key_file) if args.api_key_file else None
    existing = key_file.read_text().strip() if key_file is not None and key_file.exists() else None
    result: list[DemoData] = []

    async def main() -> None:
        app = await App.create(settings)
        try:
            result.append(await seed_demo(app, existing))
        finally:
            await app.close()

    _run(main())
    print(result[0].summary)
    if key_file is not None:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(result[0].cad_api_key + "\n")
        key_file.chmod(0o600)
        print(f"  CAD API key for the department: {key_file}")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    from securenow.server.bootstrap import App
    from securenow.server.storage.audit_repo import ChainAnchor

    settings = _settings()
    try:
        anchor = ChainAnchor.parse(args.expect_head) if args.expect_head else None
    except ValueError as exc:
        raise SystemExit(f"--expect-head: {exc}") from None

    async def main() -> None:
        app = await App.create(settings)
        try:
            created = await app.maintenance.ensure_partitions()
            await app.maintenance.apply_retention()
            sealed, tampered = await app.audit.seal_and_verify(anchor)
            head = await app.audit.head()
        finally:
            await app.close()
        print(f"partitions created: {created}; audit entries sealed: {sealed}")
        print(f"audit chain head: {head or 'empty'} (keep it outside the database; check with --expect-head)")
        if tampered is not None:
            raise DomainError(f"audit chain broken at entry {tampered}")

    _run(main())
    return 0


def _enable_faulthandler() -> None:
    """A crash in native code (grpcio, asyncpg, uvloop) still leaves the Python stacks
    of every thread on stderr, next to the JSON logs. Skipped when stderr is not a real
    file (an embedding host or a test capturing it): there is no descriptor to write to."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return
    faulthandler.enable()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="securenow", description="SecureNow server")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply (or roll back) schema migrations")
    p.add_argument("--status", action="store_true", help="list migrations and whether they are applied")
    p.add_argument("--down", type=int, metavar="N", help="roll back the last N migrations")
    p.add_argument("--down-all", action="store_true", help="roll back every migration")
    p.set_defaults(fn=cmd_migrate)

    p = sub.add_parser("serve", help="run the gRPC server, HTTP listener and workers")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("work", help="run only the background workers (relay, escalation, webhooks, maintenance)")
    p.set_defaults(fn=cmd_work)

    p = sub.add_parser("create-admin", help="create the first admin account")
    p.add_argument("--email", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--phone", default="", help="E.164 phone (default: a placeholder)")
    p.add_argument("--first-name", default="Platform")
    p.add_argument("--last-name", default="Admin")
    p.set_defaults(fn=cmd_create_admin)

    p = sub.add_parser("seed-demo", help="create demo accounts, a provider and a police department")
    p.add_argument("--api-key-file", help="keep a valid CAD API key for the demo department in this file")
    p.set_defaults(fn=cmd_seed_demo)

    p = sub.add_parser("maintain", help="create partitions ahead, apply retention, seal and verify the audit log")
    p.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="an audit chain head recorded earlier (printed here, logged by the worker): it must be unchanged",
    )
    p.set_defaults(fn=cmd_maintain)

    args = parser.parse_args(argv)
    _enable_faulthandler()
    try:
        return int(args.fn(args))
    except DomainError as exc:
        print(f"securenow {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
