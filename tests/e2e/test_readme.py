"""README.md holds: every shell command block in it runs, against a stack started by
`make run`, in a second terminal's environment (`scripts/dev_env.sh`, as `make shell` gives),
and prints what the README shows (up to `…` and times; see tests/support/readme.py). A block
that cannot run here carries `<!-- readme-test: skip: REASON -->` on the line before it;
any other block runs, so a new one cannot slip by untested."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import fresh_database
from tests.support.readme import Block, command_blocks, console_commands, output_matches
from tests.support.service_process import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# make run's listen addresses and the ports the README shows for them: the stack here listens
# on free ports, and the README's commands and outputs are read with those ports instead.
PORTS = {
    "ENTITLEMENTS_LISTEN": 50051,
    "GATEWAY_LISTEN": 8080,
    "ENTITLEMENTS_HTTP_LISTEN": 8081,
    "ENTITLEMENTS_METRICS_LISTEN": 9464,
}
# Ports README examples listen on besides make run's (a second service, "Your own catalog"):
# free ones here too.
EXAMPLE_PORTS = (50052, 50053, 8090)
DROPPED = (
    "BILLING_WEBHOOK_SYNC_SECRET",
    "CLERK_WEBHOOK_SIGNING_SECRET",
    "CLERK_WEBHOOK_SECRET",
    "CLERK_SECRET_KEY",
    "DATABASE_URL",
    "ENTITLEMENTS_TARGET",
    "ENTITLEMENTS_READ_TOKEN",
    "GATEWAY_URL",
    "MAKEFLAGS",
    "MAKELEVEL",
    "MFLAGS",
)


def base_env(data: Path) -> dict[str, str]:
    """A new terminal's: no development settings, .venv/bin not on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED and k not in PORTS}
    venv = ROOT / ".venv" / "bin"
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(":") if Path(p) != venv]
    return {**env, "PATH": ":".join(path), "ENTITLEMENTS_DATA_DIR": str(data), "SHELL": "/bin/bash"}


@contextmanager
def make_run(env: dict[str, str], log: Path) -> Iterator[None]:
    """`make run` in the foreground of a session of its own; stopped by SIGTERM (make passes
    it on to scripts/run_dev.py, which stops the gateway and the service)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["make", "-s", "run"], cwd=ROOT, env=env, stdout=out, stderr=out,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "make demo" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"make run exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def second_terminal(env: dict[str, str]) -> dict[str, str]:
    """The environment after `. scripts/dev_env.sh` in a new shell."""
    r = subprocess.run(
        ["bash", "-c", ". scripts/dev_env.sh && env -0"],
        cwd=ROOT, env=env, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if "=" in item)


def run(command: list[str], env: dict[str, str], stdin: str = "") -> tuple[int, list[str]]:
    """Run one command in a session of its own (all of it is killed if it hangs)."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(stdin, timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, [*out.splitlines(), "(killed after 60 s)"]
    return proc.returncode, out.splitlines()


def check_block(block: Block, env: dict[str, str], local: dict[int, int]) -> list[str]:
    """What is wrong with one block (nothing: it holds)."""

    def here(text: str) -> str:
        return re.sub(r"(?<=:)(\d{4,5})\b", lambda m: str(local.get(int(m[1]), m[1])), text)

    where = f"README.md:{block.line} ```{block.language}"
    if block.language == "python":
        code, out = run(["python", "-"], env, here(block.text))
        return [] if code == 0 else [f"{where}: exit {code}\n" + "\n".join(out)]
    if block.language != "console":
        code, out = run(["bash", "-eu", "-o", "pipefail", "-c", here(block.text)], env)
        return [] if code == 0 else [f"{where}: exit {code}\n" + "\n".join(out)]
    problems = []
    for command in console_commands(block):
        code, out = run(["bash", "-o", "pipefail", "-c", here(command.command)], env)
        shown = [here(line) for line in command.output]
        if not output_matches(shown, out) or (not shown and code != 0):
            problems.append(
                f"README.md:{command.line}: $ {command.command}\n(exit {code})\n--- shown\n"
                + "\n".join(shown) + "\n--- printed\n" + "\n".join(out)
            )  # fmt: skip
    return problems


def test_every_command_block_of_the_readme(pg_admin_dsn: str, tmp_path: Path) -> None:
    blocks = command_blocks((ROOT / "README.md").read_text())
    data = tmp_path / ".data"
    listen = {name: free_port() for name in PORTS}
    local = {PORTS[name]: port for name, port in listen.items()}
    local |= {shown: free_port() for shown in EXAMPLE_PORTS}
    with fresh_database(pg_admin_dsn) as dsn:
        env = {
            **base_env(data),
            "DATABASE_URL": dsn,
            **{name: f"127.0.0.1:{port}" for name, port in listen.items()},
        }
        with make_run(env, tmp_path / "make-run.console"):
            # make run's database as a user who ran `DATABASE_URL=… make run` has it exported
            # (a second service, "Your own catalog", uses it; without it, make run's embedded
            # one, which the test's make run does not start).
            terminal = {**second_terminal(base_env(data)), "DATABASE_URL": dsn}
            problems = [
                p for b in blocks if b.skip is None for p in check_block(b, terminal, local)
            ]
    ran = {b.language for b in blocks if b.skip is None}
    assert {"console", "sh", "python"} <= ran, ran
    assert not problems, "\n\n".join(problems)
