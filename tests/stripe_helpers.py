"""Signing Stripe events the way Stripe (and localstripe) do, for webhook tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid


def signed(event: dict, secret: str, ts: int | None = None) -> tuple[bytes, dict[str, str]]:
    ts = int(time.time()) if ts is None else ts
    payload = json.dumps(event).encode()
    sig = hmac.new(secret.encode(), b"%d.%s" % (ts, payload), hashlib.sha256).hexdigest()
    return payload, {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def event(kind: str, obj: dict, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }
