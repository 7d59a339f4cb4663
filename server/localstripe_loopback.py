"""localstripe, listening on loopback only: ``python -m server.localstripe_loopback``.

localstripe's own ``start`` binds ``::`` (every interface), which would let anyone on
the network create payments and register webhooks on the sandbox. This runs the same
aiohttp app on 127.0.0.1; the options are localstripe's (``--port``, ``--from-scratch``).
"""

from __future__ import annotations

import argparse
import logging
import socket

from aiohttp import web
from localstripe.server import app, store

HOST = "127.0.0.1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localstripe (loopback)")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--from-scratch", action="store_true")
    args = parser.parse_args(argv)
    if not args.from_scratch:
        store.try_load_from_disk()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    logger = logging.getLogger("aiohttp.access")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler())
    web.run_app(app, sock=sock, access_log=logger, print=None)


if __name__ == "__main__":
    main()
