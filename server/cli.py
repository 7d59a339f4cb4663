"""``showroom`` command line: serve, demo, pocketcam, printer-worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from media.udp_ports import PortRange
from server.config import (
    REHEARSAL_DB,
    ManifestError,
    Settings,
    ShowConfig,
    load_shows,
    public_secrets_in,
    rehearsal_redis_url,
)
from server.connections import ConnectionGuard, ConnectionLimits, GuardedSite
from server.embedded import EmbeddedRedis, ManagedProcess
from server.redis_client import is_cluster_url

log = logging.getLogger("showroom")


def run(coro: Awaitable[int | None]) -> int:
    """Run on uvloop (falls back to asyncio's loop if uvloop is unavailable)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro) or 0


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


class Services:
    """Embedded child services, stopped in reverse order."""

    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []

    def add(self, service: ManagedProcess) -> None:
        self.started.append(service)

    async def watch(self, interval: float = 0.5) -> None:
        """Restart an embedded service that died (redis-server killed or crashed): the
        app reconnects by itself once it is back, with its data from the AOF. Runs on
        the event loop, i.e. the main thread, so a restarted child still dies with us."""
        backoff = interval
        while True:
            await asyncio.sleep(backoff)
            backoff = interval
            for service in self.started:
                if not service.restart_on_exit or not service.died():
                    continue
                code = service.proc.returncode if service.proc else None
                log.error("embedded %s exited (code %s); restarting it", service.name, code)
                try:
                    service.respawn()
                    await service.wait_ready()
                    log.info("embedded %s is back", service.name)
                except Exception as exc:
                    log.error("embedded %s did not restart: %s", service.name, exc)
                    backoff = min(5.0, interval * 4)

    def stop(self) -> None:
        for service in reversed(self.started):
            log.info("stopping embedded %s", service.name)
            service.stop()
        self.started.clear()


def start_embedded(settings: Settings, services: Services) -> str:
    """Start what the settings do not point elsewhere; returns the Redis URL."""
    redis_url = settings.redis_url or os.environ.get("SHOWROOM_REDIS_URL")
    if not redis_url:
        redis = EmbeddedRedis(settings.data_dir / "redis", appendfsync=settings.redis_appendfsync)
        redis.start()
        services.add(redis)
        redis_url = redis.url
    from checkout.sandbox import start_sandbox_if_needed
    from server.embedded import EmbeddedStripe

    start_sandbox_if_needed(settings, services, EmbeddedStripe)
    return redis_url


async def serve(
    settings: Settings,
    redis_url: str,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
    services: Services | None = None,
) -> int:
    from server.app import create_app

    shows = load_shows(settings.manifests)
    app = create_app(settings, shows, redis_url)
    stop = _stop_event()  # before we announce ourselves: an early SIGTERM still stops cleanly
    limits = settings.connections
    # The keep-alive timer is also the deadline for a request head (slowloris).
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, keepalive_timeout=limits.header_timeout_s
    )
    await runner.setup()
    worker = settings.worker_index
    # A drop brings thousands of new connections in a second: a deep accept queue.
    # Worker processes each bind the port too (SO_REUSEPORT; see server/workers.py).
    site = GuardedSite(
        runner,
        settings.host,
        settings.port,
        ConnectionGuard(limits),
        reuse_address=True,
        reuse_port=worker is not None,
        backlog=1024,
    )
    await site.start()
    url = f"http://{settings.host}:{settings.port}"
    if worker is not None:
        from server.cluster import http_socket

        assert settings.run_dir is not None
        await web.UnixSite(runner, str(http_socket(Path(settings.run_dir), worker))).start()
        print(f"showroom worker {worker} listening on {url} (pid {os.getpid()})", flush=True)
    else:
        print(f"showroom listening on {url}", flush=True)
    watcher = asyncio.create_task(services.watch()) if services else None
    try:
        if on_ready is not None:
            await on_ready(url)
        await stop.wait()
        log.info("shutting down")
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()
    return 0


def _public_ip(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None
    if address.is_unspecified or address.is_multicast:
        raise argparse.ArgumentTypeError(f"not a usable address: {text!r}")
    return str(address)


def _udp_ports(text: str) -> PortRange:
    try:
        return PortRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        manifests=[Path(m) for m in getattr(args, "manifest", None) or []],
        host=getattr(args, "host", "127.0.0.1"),
        port=args.port,
        redis_url=getattr(args, "redis", None),
        data_dir=Path(getattr(args, "data_dir", "var")),
        hold_seconds=getattr(args, "hold_seconds", 600),
        workers=getattr(args, "workers", 1),
        worker_index=getattr(args, "worker_index", None),
        run_dir=getattr(args, "run_dir", None),
        max_viewers_per_show=getattr(args, "max_viewers", 500),
        max_viewers_per_ip=getattr(args, "max_viewers_per_ip", None),
        whep_connect_timeout_s=getattr(args, "whep_connect_timeout", 15.0),
        # With worker processes, only worker 0 prints (labels keep their order).
        print_worker=not getattr(args, "no_print_worker", False)
        and getattr(args, "worker_index", None) in (None, 0),
        public_url=getattr(args, "public_url", None),
        origin_share=getattr(args, "origin_share", 0.0),
        public_ip=getattr(args, "public_ip", None),
        udp_ports=getattr(args, "udp_ports", None),
        redis_appendfsync=getattr(args, "appendfsync", None)
        or os.environ.get("SHOWROOM_REDIS_APPENDFSYNC", "everysec"),
        allow_loopback_candidates=getattr(args, "allow_loopback_candidates", None),
        allow_private_candidates=getattr(args, "allow_private_candidates", None),
        chat_ip_per_min=getattr(args, "chat_ip_per_min", None),
        reactions_ip_per_s=getattr(args, "reactions_ip_per_s", None),
        buyers_per_ip=_int_option(args, "buyers_per_ip", "SHOWROOM_BUYERS_PER_IP", 4),
        max_pending_orders=_int_option(
            args, "max_pending_orders", "SHOWROOM_MAX_PENDING_ORDERS", 2
        ),
        drop_hold_seconds=_int_option(args, "drop_hold_seconds", "SHOWROOM_DROP_HOLD_SECONDS", 120),
        rehearsal=getattr(args, "rehearsal", False),
        connections=_connection_limits(args),
    )


def _int_option(args: argparse.Namespace, name: str, env: str, default: int) -> int:
    """A whole-number option: the flag, else the environment, else the default."""
    value = getattr(args, name, None)
    if value is None:
        value = int(os.environ.get(env) or default)
    return value


def port_problem(settings: Settings) -> str | None:
    from server.logs import port_in_use

    if settings.worker_index is None and port_in_use(settings.host, settings.port):
        return (
            f"port {settings.port} on {settings.host} is already in use "
            "(another showroom?); choose another with --port (make demo PORT=...)"
        )
    return None


def _connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    default = ConnectionLimits()
    return ConnectionLimits(
        per_ip=_arg(args, "max_connections_per_ip", default.per_ip),
        streams_per_ip=_arg(args, "max_streams_per_ip", default.streams_per_ip),
        header_timeout_s=_arg(args, "header_timeout", default.header_timeout_s),
        body_timeout_s=_arg(args, "body_timeout", default.body_timeout_s),
    )


def _arg(args: argparse.Namespace, name: str, default):
    value = getattr(args, name, None)
    return default if value is None else value


def serve_refusal(settings: Settings, shows: dict[str, ShowConfig]) -> str | None:
    """Why ``serve`` must not start with these settings (one line), or None."""
    from server.auth import secret_problem

    problem = secret_problem()
    if problem:
        return problem
    if settings.loopback_host:
        return None
    for show in shows.values():
        public = public_secrets_in(show)
        if public:
            return (
                f"refusing to serve show {show.id!r} on {settings.host} with the published "
                f"demo secret in {' and '.join(public)} ({show.manifest_path}); set your own "
                "(or SHOWROOM_STAFF_PASSWORD / SHOWROOM_<SHOW>_STREAM_KEY)"
            )
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if problem := port_problem(settings):
        print(f"showroom: {problem}", file=sys.stderr)
        return 2
    try:
        shows = load_shows(settings.manifests)  # fail fast, before any service starts
    except ManifestError as exc:
        print(f"showroom: bad manifest: {exc}", file=sys.stderr)
        return 2
    refusal = serve_refusal(settings, shows)
    if refusal:
        print(f"showroom: {refusal}", file=sys.stderr)
        return 2
    from checkout.sandbox import payment_mode_problem

    if settings.rehearsal:  # test cards only, whatever keys the environment carries
        for name in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "STRIPE_WEBHOOK_SECRET"):
            os.environ.pop(name, None)
        settings.stripe_secret_key = settings.stripe_webhook_secret = None
        log.info("rehearsal: shows unlisted, test payments only, Redis database %d", REHEARSAL_DB)
    problem = payment_mode_problem(
        settings.stripe_secret_key or os.environ.get("STRIPE_SECRET_KEY"),
        os.environ.get("STRIPE_PUBLISHABLE_KEY"),
        settings.stripe_webhook_secret or os.environ.get("STRIPE_WEBHOOK_SECRET"),
        loopback_host=settings.loopback_host,
        sandbox_allowed=getattr(args, "sandbox", False),
    )
    if problem:
        print(f"showroom: refusing to start: {problem}", file=sys.stderr)
        return 2
    services = Services()
    try:
        redis_url = start_embedded(settings, services)
        if settings.rehearsal:
            if is_cluster_url(redis_url):
                print(
                    "showroom: rehearsal mode needs a single Redis (it uses database "
                    f"{REHEARSAL_DB}; a Redis Cluster has only database 0)",
                    file=sys.stderr,
                )
                return 2
            redis_url = rehearsal_redis_url(redis_url)
        if settings.workers > 1:
            return run(supervise(args, settings, redis_url, services))
        return run(serve(settings, redis_url, services=services))
    finally:
        services.stop()


async def supervise(
    args: argparse.Namespace,
    settings: Settings,
    redis_url: str,
    services: Services | None = None,
) -> int:
    from server.workers import Supervisor

    env = dict(os.environ)
    if settings.stripe_api_base and not env.get("STRIPE_SECRET_KEY"):
        env["STRIPE_API_BASE"] = settings.stripe_api_base  # the sandbox this parent started
    url = f"http://{settings.host}:{settings.port}"
    supervisor = Supervisor(args.raw_argv, settings.workers, url, redis_url, env)
    watcher = asyncio.create_task(services.watch()) if services else None  # embedded Redis
    try:
        return await supervisor.run(_stop_event())
    finally:
        if watcher is not None:
            watcher.cancel()


def cmd_edge(args: argparse.Namespace) -> int:
    from server.edge_app import EdgeConfig, run_edge

    settings = Settings(
        host=args.host,
        port=args.port,
        redis_url=args.redis,
        public_url=args.public_url,
        public_ip=args.public_ip,
        max_viewers_per_show=args.max_viewers,
        max_viewers_per_ip=args.max_viewers_per_ip,
    )
    config = EdgeConfig(origin=args.origin, linger_s=args.linger)

    async def main() -> int:
        return await run_edge(settings, config, args.redis, _stop_event())

    return run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    from server.demo import run_demo

    return run_demo(args)


def cmd_pocketcam(args: argparse.Namespace) -> int:
    from media.pocketcam import main as pocketcam_main

    return run(pocketcam_main(args))


def cmd_stock(args: argparse.Namespace) -> int:
    """Set a product's available stock explicitly (manifest stock is only the start)."""
    from checkout.catalog import set_stock
    from server.redis_client import connect

    try:
        show = next(iter(load_shows([Path(args.manifest)]).values()))
    except ManifestError as exc:
        print(f"showroom: bad manifest: {exc}", file=sys.stderr)
        return 2
    if show.product(args.sku) is None:
        print(f"showroom: no product {args.sku!r} in show {show.id!r}", file=sys.stderr)
        return 2
    if args.set < 0:
        print("showroom: --set must not be negative", file=sys.stderr)
        return 2

    async def apply() -> None:
        redis = await connect(args.redis)
        try:
            await set_stock(redis, show.id, args.sku, args.set)
        finally:
            await redis.aclose()

    asyncio.run(apply())
    print(f"{show.id} {args.sku}: {args.set} available")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the manifests and preflight what a show needs; exit 1 on any red."""
    from devices.connections import PrinterError, open_connection
    from server import preflight

    try:
        shows = load_shows([Path(m) for m in args.manifest])
    except ManifestError as exc:
        print(f"showroom: bad manifest: {exc}")
        return 2
    secret = os.environ.get("STRIPE_SECRET_KEY")
    checks = [
        preflight.Check("manifest", preflight.GREEN, f"{len(shows)} show(s): {', '.join(shows)}"),
        preflight.grade_stripe(
            not secret,
            bool(os.environ.get("STRIPE_WEBHOOK_SECRET")),
            args.public_url or os.environ.get("SHOWROOM_PUBLIC_URL") or "http://127.0.0.1:8080",
        ),
        preflight.grade_disk(preflight.disk_free(Path(args.data_dir)), args.data_dir),
    ]

    async def redis_checks() -> list:
        from server.redis_client import connect

        redis = None
        try:
            redis = await connect(args.redis, socket_timeout=3)
            appendonly, appendfsync, skew = await preflight.redis_figures(redis)
        except Exception as exc:
            return [preflight.Check("redis", preflight.RED, f"Cannot reach {args.redis}: {exc}")]
        finally:
            if redis is not None:
                await redis.aclose()
        return [preflight.grade_persistence(appendonly, appendfsync), preflight.grade_clock(skew)]

    if args.redis:
        checks += asyncio.run(redis_checks())
    else:
        checks.append(
            preflight.Check("redis", preflight.GREEN, "Embedded Redis (AOF on) starts with serve.")
        )
    for show in shows.values():
        for printer in show.printers:
            try:
                open_connection(printer.connection).probe(3)
                checks.append(preflight.grade_printer(printer.name, True, None))
            except (PrinterError, OSError) as exc:
                checks.append(preflight.grade_printer(printer.name, False, str(exc)))
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.level.upper():6} {c.name:<{width}}  {c.detail}")
    verdict = preflight.overall(checks)
    print(f"overall: {verdict}")
    return 1 if verdict == preflight.RED else 0


def cmd_passwd(args: argparse.Namespace) -> int:
    """Read a password (twice on a terminal) and print its argon2 hash for the manifest."""
    import getpass

    from server.roles import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("New staff password: ")
        if getpass.getpass("Again: ") != password:
            print("showroom: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(password))
    except ValueError as exc:
        print(f"showroom: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_printer_worker(args: argparse.Namespace) -> int:
    from devices.worker import run_station
    from server.events import EventBus
    from server.redis_client import connect

    try:
        shows = load_shows([Path(m) for m in args.manifest])
    except ManifestError as exc:
        print(f"showroom: bad manifest: {exc}", flush=True)
        return 2
    base_url = args.public_url or os.environ.get("SHOWROOM_PUBLIC_URL") or "http://127.0.0.1:8080"

    async def station() -> int:
        redis = await connect(args.redis)
        try:
            # Publishing needs no subscription: the bus is not started.
            return await run_station(redis, shows, base_url, EventBus(redis).publish)
        finally:
            await redis.aclose()

    return run(station())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="showroom", description="Live-commerce streaming server")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("SHOWROOM_LOG_FORMAT", "text"),
        help="one line per event (text) or one JSON object per line (json)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server for one or more show manifests")
    p.add_argument(
        "--manifest", action="append", required=True, help="show manifest (TOML); repeatable"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--redis",
        help="Redis URL, redis+cluster://HOST:PORT for a Redis Cluster "
        "(default: embedded redis-server under --data-dir)",
    )
    p.add_argument(
        "--data-dir", default="var", help="data folder for embedded services (default ./var)"
    )
    p.add_argument(
        "--appendfsync",
        choices=["everysec", "always"],
        help="embedded Redis AOF fsync policy (default everysec; env SHOWROOM_REDIS_APPENDFSYNC)",
    )
    p.add_argument(
        "--hold-seconds", type=int, default=600, help="how long an add-to-cart holds stock"
    )
    p.add_argument(
        "--max-viewers", type=int, default=500, help="viewers per show before WHEP answers 503"
    )
    p.add_argument(
        "--max-viewers-per-ip",
        type=int,
        default=None,
        help="WHEP sessions one client address may hold, 0 = no cap "
        "(default 8; no cap when --host is a loopback address)",
    )
    p.add_argument(
        "--whep-connect-timeout",
        type=float,
        default=15.0,
        help="seconds a WHEP session may take to connect before it is closed (default 15)",
    )
    p.add_argument(
        "--buyers-per-ip",
        type=int,
        help="buyers one IP may stand for in per-buyer limits and unpaid orders "
        "(default 4, 0 = no per-IP limits; env SHOWROOM_BUYERS_PER_IP)",
    )
    p.add_argument(
        "--max-pending-orders",
        type=int,
        help="unpaid orders one buyer may have at once (default 2, 0 = no cap; "
        "env SHOWROOM_MAX_PENDING_ORDERS)",
    )
    p.add_argument(
        "--drop-hold-seconds",
        type=int,
        help="how long an add-to-cart holds a drop's units (default 120; "
        "env SHOWROOM_DROP_HOLD_SECONDS)",
    )
    p.add_argument(
        "--rehearsal",
        action="store_true",
        help="rehearse: shows unlisted, orders TEST, stock and reports kept apart",
    )
    p.add_argument(
        "--sandbox",
        action="store_true",
        help="allow the Stripe sandbox (test cards only) on a non-loopback --host",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes sharing the port: N or auto (one per core); default 1",
    )
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-print-worker", action="store_true", help="do not print in this process")
    limits = ConnectionLimits()
    p.add_argument(
        "--max-connections-per-ip",
        type=int,
        help=f"concurrent connections from one address (default {limits.per_ip}; 0 = no cap)",
    )
    p.add_argument(
        "--max-streams-per-ip",
        type=int,
        help=f"concurrent live event streams from one address (default {limits.streams_per_ip}; "
        "0 = no cap)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        help=f"seconds to send a request head or stay idle (default {limits.header_timeout_s:g})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        help=f"seconds to send a whole request body (default {limits.body_timeout_s:g})",
    )
    p.add_argument(
        "--public-url",
        help="base of every link and QR code (default http://HOST:PORT); "
        "https:// turns on Secure cookies and HSTS",
    )
    for kind in ("loopback", "private"):
        p.add_argument(
            f"--allow-{kind}-candidates",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"send ICE checks to {kind} addresses a peer offers "
            "(default: only when --host is a loopback address)",
        )
    p.add_argument(
        "--chat-ip-per-min",
        type=int,
        default=None,
        help="chat messages a minute from one client address, 0 = no limit "
        "(default 60; no limit when --host is a loopback address)",
    )
    p.add_argument(
        "--reactions-ip-per-s",
        type=int,
        default=None,
        help="reaction taps counted a second from one client address, 0 = no limit "
        "(default 40; no limit when --host is a loopback address)",
    )
    p.add_argument(
        "--public-ip",
        type=_public_ip,
        default=None,
        help="the address viewers reach this server's media on (cloud 1:1 NAT): "
        "advertised in the server's ICE candidates",
    )
    p.add_argument(
        "--udp-ports",
        type=_udp_ports,
        default=None,
        metavar="LO-HI",
        help="every media (ICE) UDP socket inside this range, e.g. 40000-40999 (firewalls)",
    )
    p.add_argument(
        "--origin-share",
        type=_share,
        default=0.0,
        metavar="F",
        help="with edge nodes: the part (0-1) of a show's viewers this server keeps "
        "before it sends new ones to an edge (default 0: all to edges while one is up)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "edge", help="serve viewers' WHEP for shows pulled from an origin (an edge node)"
    )
    p.add_argument(
        "--origin", required=True, help="the origin's base URL, e.g. http://10.0.0.5:8080"
    )
    p.add_argument(
        "--redis",
        default=os.environ.get("SHOWROOM_REDIS_URL"),
        required=not os.environ.get("SHOWROOM_REDIS_URL"),
        help="the origin's Redis (heartbeat, presence, viewer slots, shared secret)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--public-url", default=None, help="the URL viewers reach this edge at")
    p.add_argument("--public-ip", type=_public_ip, default=None)
    p.add_argument(
        "--linger",
        type=float,
        default=10.0,
        help="seconds a show's pull from the origin stays open after its last viewer left",
    )
    p.add_argument("--max-viewers", type=int, default=500, help="per show, over every node")
    p.add_argument("--max-viewers-per-ip", type=int, default=None)
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser(
        "demo", help="embedded Redis + Stripe sandbox + demo show + PocketCam + virtual printer"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", default="var/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pocketcam", help="publish a test pattern, file or camera over WHIP")
    p.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    p.add_argument("--key", required=True, help="the show's stream key")
    p.add_argument("--source", default="testsrc", help="testsrc | FILE | /dev/videoN")
    p.add_argument("--size", default="1280x720")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--codec", default="h264", choices=["h264", "vp8"])
    p.set_defaults(func=cmd_pocketcam)

    p = sub.add_parser("stock", help="set a product's available stock in Redis")
    p.add_argument("--manifest", required=True)
    p.add_argument("--sku", required=True)
    p.add_argument("--set", type=int, required=True, help="units available to buy")
    p.add_argument(
        "--redis",
        default=os.environ.get("SHOWROOM_REDIS_URL"),
        required=not os.environ.get("SHOWROOM_REDIS_URL"),
    )
    p.set_defaults(func=cmd_stock)

    p = sub.add_parser(
        "check", help="validate manifests and preflight Redis, Stripe, printers, disk"
    )
    p.add_argument("--manifest", action="append", required=True)
    p.add_argument("--redis", default=os.environ.get("SHOWROOM_REDIS_URL"))
    p.add_argument("--data-dir", default="var")
    p.add_argument("--public-url", default=None)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "passwd", help="read a password on stdin, print a hash for [[staff.members]]"
    )
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("printer-worker", help="print station: consume paid orders and print labels")
    p.add_argument("--manifest", action="append", required=True)
    p.add_argument(
        "--redis",
        default=os.environ.get("SHOWROOM_REDIS_URL"),
        required=not os.environ.get("SHOWROOM_REDIS_URL"),
    )
    p.add_argument("--public-url", default=None)
    p.set_defaults(func=cmd_printer_worker)
    return parser


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError("expected a number from 0 to 1")
    return share


def _workers(value: str) -> int:
    from server.workers import worker_count

    try:
        return worker_count(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of workers or 'auto'") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.raw_argv = list(argv)  # what worker processes are started with
    from server import logs

    logs.configure(args.verbose, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
