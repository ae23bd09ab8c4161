"""`make deploy-check`: the image builds, as far as a machine without a container engine can show.

1. The build context is resolved through `.dockerignore` by Docker's own rules (docker-py's
   `exclude_paths`, the matcher `docker build` from Python uses), and every source of a `COPY`
   in the Dockerfile (parsed by dockerfile-parse) must be in it: a source left out fails the
   build, and is named here.
2. Unless `--static-only`: exactly that context is copied to a temporary directory, the runtime
   lock and the packages are installed from it into a fresh venv as the Dockerfile's builder
   stage does, and each entrypoint is started from that venv (`--help`); the embedded
   PostgreSQL must be absent, and the service must refuse to start without DATABASE_URL (exit 2,
   one line naming it). With a reachable PostgreSQL (TEST_ADMIN_DATABASE_URL, default the local
   one) `migrate` runs on a fresh database, the service starts on it and answers gRPC health,
   the gateway's /readyz and the CLI reach it, and both are stopped (exit 0).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
_GLOB = set("*?[")


class ContextError(Exception):
    """The Dockerfile copies something the build context does not hold."""


def dockerignore_patterns(root: Path) -> list[str]:
    """The patterns of `root/.dockerignore`, read as docker-py's `APIClient.build` reads them."""
    path = root / ".dockerignore"
    if not path.exists():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def build_context(root: Path, dockerfile: str = "Dockerfile") -> set[str]:
    """Every path (files and directories, relative to `root`) `docker build` sends."""
    return set(exclude_paths(str(root), dockerignore_patterns(root), dockerfile=dockerfile))


def copy_sources(root: Path, dockerfile: str = "Dockerfile") -> list[tuple[int, str]]:
    """(line, source) of every COPY/ADD from the build context (not `--from=` a stage)."""
    found = []
    for item in DockerfileParser(str(root / dockerfile), env_replace=True).structure:
        if item["instruction"] not in ("COPY", "ADD"):
            continue
        rest, flags = item["value"].strip(), []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.lstrip()
        if any(f.startswith("--from=") for f in flags):
            continue
        words = json.loads(rest) if rest.startswith("[") else rest.split()
        found += [(int(item["startline"]) + 1, src) for src in words[:-1]]
    return found


def missing_sources(root: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """One message per COPY source the context lacks (empty: every source is there)."""
    context = build_context(root, dockerfile)
    problems = []
    for line, source in copy_sources(root, dockerfile):
        src = os.path.normpath(source.lstrip("/"))
        if _GLOB & set(src):
            present = any(fnmatch.fnmatchcase(p, src) for p in context)
        elif (root / src).is_dir():
            present = src == "." or (src in context and any(
                p.startswith(src + "/") and (root / p).is_file() for p in context
            ))  # fmt: skip
        else:
            present = src in context
        if not present:
            why = "not in the repository" if not (root / src).exists() else "excluded"
            problems.append(
                f"{dockerfile}:{line}: COPY {source}: not in the build context "
                f"({why}; see .dockerignore)"
            )
    return problems


def copy_context(root: Path, files: set[str], dest: Path) -> None:
    for rel in sorted(files):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env = {k: v for k, v in env.items() if not k.startswith(("ENTITLEMENTS_", "GATEWAY_"))}
    return {**env, **extra}


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ContextError(
            f"{' '.join(argv)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
        )


def install(context: Path, venv: Path) -> None:
    """The Dockerfile's builder stage, with the context's files only."""
    env = _clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "venv", str(venv)], context, env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "--require-hashes", "-r", "requirements/runtime.lock"], context, env)
    _run([*pip, "--no-deps", "--no-build-isolation", "./clients/python", "."], context, env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smoke_offline(venv: Path, work: Path) -> None:
    """Entrypoints start; no embedded PostgreSQL; no DATABASE_URL → exit 2, one line."""
    env = _clean_env(ENTITLEMENTS_DATA_DIR=str(work / "data"))
    for command in ("entitlements-service", "entitlements-gateway", "entitlements"):
        _run([str(venv / "bin" / command), "--help"], work, env, timeout=60)
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('pgserver') is not None)"
    _run([str(venv / "bin" / "python"), "-c", probe], work, env)
    env |= {"ENTITLEMENTS_LISTEN": "127.0.0.1:0", "ENTITLEMENTS_METRICS_LISTEN": "off"}
    done = subprocess.run(
        [str(venv / "bin" / "entitlements-service")],
        cwd=work, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    if done.returncode != 2 or len(lines) != 1 or "DATABASE_URL" not in lines[0]:
        raise ContextError(
            f"without DATABASE_URL the image's service must refuse with exit 2 and one line "
            f"naming it; it exited {done.returncode}:\n{done.stderr[-2000:]}"
        )


@contextmanager
def _process(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=out)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ContextError(f"{argv[0]} did not stop on SIGTERM; see {log}") from None
        if code != 0:
            raise ContextError(f"{argv[0]} exited {code} on SIGTERM:\n{log.read_text()[-2000:]}")


def _until(check: Callable[[], bool], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ContextError(f"{what} within {timeout:.0f} s:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


def smoke_with_database(venv: Path, work: Path, database_url: str) -> None:
    """migrate, then the service (gRPC health SERVING), the gateway (/readyz) and the CLI."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    bin_ = venv / "bin"
    port, gw_port = _free_port(), _free_port()
    target = f"127.0.0.1:{port}"
    env = _clean_env(
        DATABASE_URL=database_url,
        ENTITLEMENTS_LISTEN=target,
        ENTITLEMENTS_METRICS_LISTEN="127.0.0.1:0",
        ENTITLEMENTS_MIGRATE_ON_START="false",
        BILLING_WEBHOOK_SYNC_SECRET="deploy-check-" + "s" * 32,
        CLERK_WEBHOOK_SIGNING_SECRET="whsec_ZGVwbG95LWNoZWNrLXNpZ25pbmcta2V5",
        ENTITLEMENTS_TARGET=target,
        GATEWAY_LISTEN=f"127.0.0.1:{gw_port}",
    )
    _run([str(bin_ / "entitlements-service"), "migrate"], work, env, timeout=60)

    def serving() -> bool:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # type: ignore[attr-defined]
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    service_log, gateway_log = work / "service.log", work / "gateway.log"
    with _process([str(bin_ / "entitlements-service")], work, env, service_log):
        _until(serving, "the service did not answer gRPC health SERVING", service_log)
        with _process([str(bin_ / "entitlements-gateway")], work, env, gateway_log):
            _until(ready, "the gateway's /readyz did not answer 200", gateway_log)
        _run([str(bin_ / "entitlements"), "limits", "user_deploy"], work, env)


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str | None]:
    """A new database on `admin_dsn`'s server, dropped afterwards; None when unreachable."""
    import asyncio
    import secrets

    import asyncpg

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    name = f"deploy_check_{secrets.token_hex(4)}"
    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"deploy-check: no PostgreSQL at TEST_ADMIN_DATABASE_URL ({type(exc).__name__}): "
              "the service was not started against a database", file=sys.stderr)  # fmt: skip
        yield None
        return
    head, _, query = admin_dsn.partition("?")
    try:
        yield f"{head.rpartition('/')[0]}/{name}" + (f"?{query}" if query else "")
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the build context's root")
    parser.add_argument("--static-only", action="store_true", help="only step 1")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    problems = missing_sources(root)
    for problem in problems:
        print(f"deploy-check: {problem}", file=sys.stderr)
    if problems:
        return 1
    files = build_context(root)
    print(f"deploy-check: every COPY source is in the build context ({len(files)} paths)")
    if args.static_only:
        return 0
    admin_dsn = os.environ.get(
        "TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deploy-check-")))
        context, venv = work / "context", work / "venv"
        copy_context(root, files, context)
        try:
            install(context, venv)
            smoke_offline(venv, work)
            print("deploy-check: installed from the context alone; every entrypoint starts; "
                  "no pgserver; no DATABASE_URL → exit 2")  # fmt: skip
            database_url = stack.enter_context(fresh_database(admin_dsn))
            if database_url is not None:
                smoke_with_database(venv, work, database_url)
                print("deploy-check: migrate, service (gRPC health SERVING), gateway (/readyz) "
                      "and CLI ran from it against PostgreSQL and stopped cleanly")  # fmt: skip
        except ContextError as exc:
            print(f"deploy-check: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
