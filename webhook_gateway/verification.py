"""Svix signature verification over the raw body, hardened against hostile input.

The `svix` library does the cryptography. Its errors carry no kind, only a message, so what
must be told apart is decided before it runs: the headers' shapes and the timestamp's
tolerance are checked here (the same ±5 minutes as svix), and then a `WebhookVerificationError`
means no secret signed it and a `ValueError` (a signature entry without a comma, bad base64)
a malformed signature. Every failure becomes a reason and never escapes as a 500.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from svix.webhooks import Webhook, WebhookVerificationError

HEADER_NAMES = ("svix-id", "svix-timestamp", "svix-signature")
MAX_ID_LENGTH = 255
MAX_SIGNATURE_HEADER_LENGTH = 4096
_ID = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces
_TIMESTAMP = re.compile(r"^\d{1,12}$")
TOLERANCE_SECONDS = 5 * 60  # svix's own


@dataclass(frozen=True)
class Verified:
    event_id: str
    signed_at_seconds: int


class VerificationFailed(Exception):
    """The delivery is not authentic or not well formed; `reason` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Verifier:
    """Accepts a delivery when any one of the configured secrets verifies it (rotation)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._webhooks = [Webhook(s) for s in secrets]

    def verify(self, body: bytes, headers: Mapping[str, Sequence[str]]) -> Verified:
        values: dict[str, str] = {}
        for name in HEADER_NAMES:
            found = headers.get(name, ())
            if len(found) == 0 or not found[0]:
                raise VerificationFailed("missing_header", f"missing {name} header")
            if len(found) > 1:
                raise VerificationFailed("duplicate_header", f"{name} header given more than once")
            values[name] = found[0]
        event_id, timestamp, signature = (values[n] for n in HEADER_NAMES)
        if len(event_id) > MAX_ID_LENGTH or not _ID.match(event_id):
            raise VerificationFailed("malformed_header", "malformed svix-id header")
        if not _TIMESTAMP.match(timestamp):
            raise VerificationFailed("malformed_header", "malformed svix-timestamp header")
        if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            raise VerificationFailed("timestamp", "svix-timestamp outside the ±5 minute tolerance")
        if len(signature) > MAX_SIGNATURE_HEADER_LENGTH:
            raise VerificationFailed("malformed_header", "svix-signature header too long")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationFailed("malformed_body", "body is not UTF-8") from None
        last = VerificationFailed("bad_signature", "no matching signature")
        for webhook in self._webhooks:
            try:
                webhook.verify(body, dict(values))
                return Verified(event_id, int(timestamp))
            except WebhookVerificationError:
                last = VerificationFailed("bad_signature", "no matching signature")
            except ValueError:  # an entry without a comma, bad base64 (binascii.Error)
                last = VerificationFailed("malformed_signature", "malformed svix-signature")
        raise last
