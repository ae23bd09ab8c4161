"""What the CLI prints: under `--json`, protobuf's JSON mapping of the response with the proto
field names, as grpcurl prints them (`previous_plan`, not `previousPlan`), and every field
without presence even at its default (`"allowed": false`, `"version": "0"`, `[]`) — what
`grpcurl -emit-defaults` prints, less its `null` for an unset message field such as
`valid_until` (left out: no time limit). Otherwise aligned `field value` lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def when(message: Message, field: str) -> str | None:
    """A Timestamp field as `YYYY-MM-DD HH:MM:SS` UTC for the tables; None when unset."""
    if not message.HasField(field):
        return None
    moment = getattr(message, field).ToDatetime(tzinfo=UTC)
    return str(moment.strftime("%Y-%m-%d %H:%M:%S"))


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_dicts(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [to_dict(m) for m in messages]


def dump_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def error_json(code: str, message: str) -> None:
    """The one shape of every error under `--json`, on stdout."""
    dump_json({"error": {"code": code, "message": message}})
    sys.stdout.flush()


def print_message(message: Message, as_json: bool) -> None:
    if as_json:
        dump_json(to_dict(message))
        return
    print(human(message))


def human(message: Message) -> str:
    lines = []
    fields = message.DESCRIPTOR.fields_by_name
    data = to_dict(message)
    for key, value in sorted(data.items(), key=lambda kv: fields[kv[0]].index):
        if key == "limits" and isinstance(value, dict):
            for name, limit in sorted(value.items()):
                shown = "unlimited" if limit.get("unlimited") else limit.get("value", "0")
                lines.append(f"  {name:<20} {shown}")
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, bool):
            value = str(value).lower()
        lines.append(f"{key:<22} {value}")
    return "\n".join(lines)
