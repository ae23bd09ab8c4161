"""A PostgreSQL server of the test's own that checks passwords and requires TLS (the shared test
server trusts every local connection, so it cannot refuse a password): initdb with
scram-sha-256, a certificate from tests/support/tls_material.py, `hostssl` only, on a free port.
Run as the `postgres` system user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.service_process import free_port
from tests.support.tls_material import TlsFiles, make_tls_files

PASSWORD = "Pw-s3cret-never-shown"


@dataclass(frozen=True)
class PrivatePostgres:
    port: int
    password: str
    tls: TlsFiles  # tls.ca signed the server's certificate

    def url(self, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        base = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"
        return f"{base}?{params}" if params else base


def _bin(name: str) -> str:
    """The machine's PostgreSQL binaries, else the ones pgserver ships."""
    found = shutil.which(name)
    if found:
        return found
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / name)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    base = Path(tempfile.mkdtemp(prefix="ent-private-pg-"))
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    run_as = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    tls = make_tls_files(base)
    data = base / "data"
    (base / "pw").write_text(PASSWORD)
    for path in (base, *base.iterdir()):
        path.chmod(0o700 if path.is_dir() else 0o600)
        if user:
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=60, **run_as)  # type: ignore[call-overload]

    try:
        run(_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
            f"--pwfile={base / 'pw'}", "--no-sync", "-E", "UTF8")  # fmt: skip
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{base}'\nfsync = off\n"
                f"ssl = on\nssl_cert_file = '{tls.server_cert}'\n"
                f"ssl_key_file = '{tls.server_key}'\n"
            )
        (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 scram-sha-256\n")
        run(_bin("pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "start")
        try:
            yield PrivatePostgres(port, PASSWORD, tls)
        finally:
            run(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
