"""``showroom demo``: everything on one box, live without a camera.

Starts the embedded Redis and Stripe sandbox, a demo show, the server, a PocketCam
publishing a test pattern, and a virtual printer that writes labels to files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from server.cli import Services, _settings, port_problem, run, serve, start_embedded
from server.logs import lan_addresses

log = logging.getLogger("showroom.demo")
TEMPLATE = Path(__file__).with_name("demo") / "show.toml"


def write_manifest(data_dir: Path) -> Path:
    labels = (data_dir / "labels").resolve()
    labels.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo.toml"
    path.write_text(TEMPLATE.read_text().replace("{labels_dir}", str(labels)))
    return path


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run_demo(args) -> int:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    args.manifest = [str(write_manifest(data_dir))]
    settings = _settings(args)
    if problem := port_problem(settings):
        print(f"showroom: {problem}", file=sys.stderr)
        return 2
    lan = lan_addresses() if settings.host in ("0.0.0.0", "::") else []
    if lan and not settings.public_url:
        # QR codes and label links must open on a phone on the same network.
        settings.public_url = f"http://{lan[0]}:{settings.port}"
    services = Services()
    try:
        say(f"starting embedded Redis and the Stripe sandbox (data in {data_dir})")
        redis_url = start_embedded(settings, services)

        async def on_ready(url: str) -> None:
            say("starting PocketCam: publishing a test pattern to the demo show")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                "pocketcam",
                f"{url}/whip/demo",
                "--key",
                "demo-stream-key",
                "--source",
                "testsrc",
            )
            _children.append(proc)
            print(
                "\n"
                f"  Viewer page:  {url}/shows/demo\n"
                f"  Host page:    {url}/shows/demo/host   (password: demo-staff)\n"
                f"  Staff page:   {url}/staff             (password: demo-staff)\n"
                f"  Labels:       {(data_dir / 'labels').resolve()}  (ESC/POS bytes + PNG previews)\n"
                "  Test card:    4242 4242 4242 4242 (any future date, any CVC)\n"
                + "".join(f"  On a phone:   http://{ip}:{settings.port}/shows/demo\n" for ip in lan)
                + "\n  Press Ctrl+C to stop.\n",
                flush=True,
            )

        _children: list[asyncio.subprocess.Process] = []

        async def main() -> int:
            try:
                return await serve(settings, redis_url, on_ready=on_ready, services=services)
            finally:
                for proc in _children:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(proc.wait(), 5)

        return run(main())
    finally:
        services.stop()
