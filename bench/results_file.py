"""Merging one benchmark run alone into bench/results/latest.json: its result under its name,
with when it ran and its targets; the rest of the file stays the last full run's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def merge_into_latest(
    latest: Path, name: str, found: dict[str, Any], targets: dict[str, Any] | None = None
) -> None:
    data = json.loads(latest.read_text()) if latest.exists() else {}
    data[name] = {**found, "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    if targets:
        data.setdefault("targets", {}).update(targets)
    latest.parent.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {name} into {latest}")
