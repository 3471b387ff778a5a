"""Sign webhook deliveries the way the providers do (for tests, the example and the benchmark)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def github(secret: str, body: bytes, delivery: str) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Delivery": delivery, "X-GitHub-Event": "push",
            "Content-Type": "application/json"}


def shopify(secret: str, body: bytes, delivery: str, topic: str = "orders/create") -> dict[str, str]:
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"X-Shopify-Hmac-Sha256": sig, "X-Shopify-Webhook-Id": delivery, "X-Shopify-Topic": topic,
            "Content-Type": "application/json"}


def stripe(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={sig}", "Content-Type": "application/json"}


def standard(secret: str, body: bytes, msg_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks v1: secret ``whsec_<base64>``; signed content ``id.timestamp.body``."""
    t = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{t}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(t), "webhook-signature": f"v1,{sig}",
            "Content-Type": "application/json"}
