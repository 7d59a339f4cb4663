"""Where an email goes: an SMTP server (aiosmtplib), or a file when none is configured."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from server.config import EmailConfig

log = logging.getLogger("showroom.mail")

SMTP_TIMEOUT_S = 20


class Transport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    def __init__(self, config: EmailConfig) -> None:
        self.config = config

    async def send(self, message: EmailMessage) -> None:
        c = self.config
        # Port 465 is TLS from the first byte; elsewhere STARTTLS when asked for.
        await aiosmtplib.send(
            message,
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password,
            use_tls=c.port == 465,
            start_tls=c.starttls if c.port != 465 else False,
            timeout=SMTP_TIMEOUT_S,
        )


class FileTransport:
    """Writes each message as an .eml file: the demo and a show without ``[email]``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, message: EmailMessage) -> None:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        await asyncio.to_thread(self._write, self.folder / name, bytes(message))

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a message
