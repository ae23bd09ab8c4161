"""Fail when pyproject.toml names a dependency the hashed locks do not pin at that version.

`make lock` re-resolves the locks; this check (part of `make check`) makes a forgotten re-lock
fail CI instead of installing something nobody reviewed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            found[_name(m.group(1))] = m.group(2)
    return found


def main(pyproject: str, dev_lock: str, bench_lock: str, runtime_lock: str | None = None) -> int:
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    extras = project.get("optional-dependencies", {})
    dev = [*project["dependencies"], *extras.get("dev", []), *extras.get("embedded", [])]
    wanted = {dev_lock: dev, bench_lock: [*dev, *extras.get("bench", [])]}
    problems = []
    if runtime_lock is not None:  # the image's lock (Dockerfile): the project's own dependencies
        wanted[runtime_lock] = list(project["dependencies"])
        # ... and not the embedded PostgreSQL (the image runs against DATABASE_URL only)
        if "pgserver" in pins(Path(runtime_lock)):
            problems.append(f"{runtime_lock}: pgserver (the `embedded` extra) is not the image's")
    for lock, requirements in wanted.items():
        pinned = pins(Path(lock))
        for requirement in requirements:
            name, _, version = requirement.partition("==")
            if pinned.get(_name(name)) != version:
                problems.append(f"{lock}: {requirement} is not pinned (run `make lock`)")
        if not all("--hash=sha256:" in part for part in Path(lock).read_text().split("==")[1:]):
            problems.append(f"{lock}: every pin needs hashes")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
