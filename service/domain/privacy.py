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


def _scrub(root: Any) -> Any:
    """A copy of `root` with personal fields replaced. Iterative: a payload nested thousands
    deep cannot exhaust the stack (the housekeeping task runs this on every stored payload)."""
    holder: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(root, holder, 0)]  # (node, parent copy, key in it)
    while stack:
        node, parent, key = stack.pop()
        if isinstance(node, dict):
            copy: dict[str, Any] = {}
            parent[key] = copy
            for k, v in node.items():
                if k in PERSONAL_KEYS and v not in (None, "", [], {}):
                    copy[k] = SCRUBBED
                else:
                    copy[k] = None
                    stack.append((v, copy, k))
        elif isinstance(node, list):
            items: list[Any] = [None] * len(node)
            parent[key] = items
            stack.extend((v, items, i) for i, v in enumerate(node))
        else:
            parent[key] = node
    return holder[0]


def scrub_payload(payload: bytes) -> bytes:
    """The payload with personal fields replaced; a body that is not JSON, or too deep for the
    JSON codec, is dropped whole (it cannot be searched for what it holds). Never raises."""
    try:
        data = json.loads(payload)
        return json.dumps(_scrub(data), separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
        return b""
