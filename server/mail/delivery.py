"""Turns an outbox job into an email and sends it through the show's transport."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from checkout.orders import Status, cents_str, load_order
from server import links
from server.config import ShowConfig
from server.mail import messages
from server.mail.outbox import Job, Skip
from server.mail.reminders import is_subscribed
from server.mail.transport import FileTransport, SmtpTransport, Transport

log = logging.getLogger("showroom.mail")

FILE_SENDER = "showroom@localhost"


@dataclass
class Mailer:
    redis: object
    shows: dict[str, ShowConfig]
    base_url: str
    secret: bytes
    mail_dir: Path  # where emails go for shows without [email]
    sandbox: bool = False
    _transports: dict[str, Transport] = field(default_factory=dict)

    def transport(self, show: ShowConfig) -> tuple[Transport, str]:
        if show.id not in self._transports:
            if show.email is not None:
                self._transports[show.id] = SmtpTransport(show.email)
            else:
                self._transports[show.id] = FileTransport(self.mail_dir)
        sender = show.email.sender if show.email else FILE_SENDER
        return self._transports[show.id], sender

    async def deliver(self, job: Job) -> None:
        kind = job.get("kind")
        if kind == "order":
            draft, show = await self._order_draft(job)
        elif kind == "reminder":
            draft, show = await self._reminder_draft(job)
        else:
            raise Skip(f"unknown kind {kind!r}")
        transport, sender = self.transport(show)
        await transport.send(messages.to_message(draft, sender))
        log.info("mail sent: %s to %s", draft.subject, draft.to)

    def _show(self, show_id: str) -> ShowConfig:
        show = self.shows.get(show_id)
        if show is None:
            raise Skip(f"no show {show_id!r} in this process")
        return show

    async def _order_draft(self, job: Job) -> tuple[messages.Draft, ShowConfig]:
        order = await load_order(self.redis, str(job.get("order_id", "")))
        if order is None:
            raise Skip("no such order")
        if not order.buyer_email:
            raise Skip("order without an email address")
        show = self._show(order.show)
        url = links.order_url(self.base_url, self.secret, order.order_id)
        status = str(job.get("status", ""))
        common = {"to": order.buyer_email, "show_title": show.title, "number": order.number}
        if status == Status.PAID:
            lines = [
                messages.Line(i.name, i.quantity, cents_str(i.total_cents)) for i in order.items
            ]
            draft = messages.receipt(
                **common,
                lines=lines,
                amount=cents_str(order.amount_cents),
                currency=order.currency,
                pickup_note=show.pickup_note,
                order_url=url,
                test=self.sandbox,
            )
        elif status == "ready":
            draft = messages.ready(**common, pickup_note=show.pickup_note, order_url=url)
        elif status == Status.REFUNDED:
            draft = messages.refund(
                **common,
                amount=cents_str(order.amount_cents),
                currency=order.currency,
                order_url=url,
            )
        else:
            raise Skip(f"no email for status {status!r}")
        return draft, show

    async def _reminder_draft(self, job: Job) -> tuple[messages.Draft, ShowConfig]:
        show = self._show(str(job.get("show", "")))
        email = str(job.get("email", ""))
        if not await is_subscribed(self.redis, show.id, email):
            raise Skip("unsubscribed before the show went live")
        draft = messages.reminder(
            to=email,
            show_title=show.title,
            watch_url=f"{self.base_url}/shows/{show.id}",
            unsubscribe_url=links.unsubscribe_url(self.base_url, self.secret, show.id, email),
        )
        return draft, show
