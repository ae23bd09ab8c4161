"""Scrubbing personal data (emails, names, phone numbers, avatars) from stored payloads.

What decides entitlements (ids, statuses, plans, periods, timestamps) is kept, so a scrubbed
delivery can still be replayed.
"""

from __future__ import annotations

import json
from typing import Any

SCRUBBED = "[scrubbed]"
# Keys that hold personal data in Clerk's user, organization and payer objects.
PERSONAL_KEYS = frozenset(
    {
        "email",
        "email_address",
        "email_addresses",
        "first_name",
        "last_name",
        "username",
        "phone_number",
        "phone_numbers",
        "image_url",
        "profile_image_url",
        "organization_name",
        "web3_wallets",
        "external_accounts",
        "unsafe_metadata",
        "private_metadata",
        "public_metadata",
        "client_ip",
        "user_agent",
    }
)


def _scrub(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (SCRUBBED if k in PERSONAL_KEYS and v not in (None, "", [], {}) else _scrub(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_scrub(v) for v in node]
    return node


def scrub_payload(payload: bytes) -> bytes:
    """The payload with personal fields replaced; a body that is not JSON is dropped whole
    (it cannot be searched for what it holds)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return b""
    return json.dumps(_scrub(data), separators=(",", ":")).encode()
