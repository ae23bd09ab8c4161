"""Every way DATABASE_URL can be wrong, on the real `entitlements-service` and its `migrate`:
one line on stderr naming DATABASE_URL with the password masked, no traceback, and the
documented exit code (3: unreachable or refused; 2: the URL cannot be read)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from service.entrypoints.launch import EXIT_CONFIG, EXIT_DATABASE_UNAVAILABLE
from tests.support import database_dsn
from tests.support.private_postgres import PASSWORD, PrivatePostgres, private_postgres
from tests.support.service_process import SCRIPTS, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def _with_user(dsn: str, user: str) -> str:
    """The shared server's URL for another role, with a password (it is not asked for)."""
    parts = urlsplit(dsn)
    netloc = f"{user}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _tcp_only(admin: str) -> str:
    if "host=" in admin:
        pytest.skip("the shared PostgreSQL is a Unix socket here (no TLS to refuse)")
    return admin


Case = Callable[[PrivatePostgres, str], str]
CASES: dict[str, tuple[Case, int, str]] = {
    "unknown host": (
        lambda pg, admin: f"postgresql://postgres:{PASSWORD}@no-such-host.invalid:5432/postgres",
        EXIT_DATABASE_UNAVAILABLE,
        "cannot connect",
    ),
    "nothing on the port": (
        lambda pg, admin: f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/postgres",
        EXIT_DATABASE_UNAVAILABLE,
        "cannot connect",
    ),
    "no such database": (
        lambda pg, admin: database_dsn(_with_user(admin, "postgres"), "no_such_database"),
        EXIT_DATABASE_UNAVAILABLE,
        'database "no_such_database" does not exist',
    ),
    "no such role": (
        lambda pg, admin: _with_user(admin, "no_such_role"),
        EXIT_DATABASE_UNAVAILABLE,
        'role "no_such_role" does not exist',
    ),
    "wrong password": (
        lambda pg, admin: pg.url(sslmode="require").replace(PASSWORD, PASSWORD + "-wrong"),
        EXIT_DATABASE_UNAVAILABLE,
        "password authentication failed",
    ),
    "server requires TLS": (
        lambda pg, admin: pg.url(sslmode="disable"),
        EXIT_DATABASE_UNAVAILABLE,
        "no encryption",
    ),
    "server offers no TLS": (
        lambda pg, admin: f"{_tcp_only(admin)}{'&' if '?' in admin else '?'}sslmode=require",
        EXIT_DATABASE_UNAVAILABLE,
        "rejected SSL upgrade",
    ),
    "server certificate not trusted": (
        lambda pg, admin: pg.url(sslmode="verify-full", sslrootcert=str(pg.tls.client_cert)),
        EXIT_DATABASE_UNAVAILABLE,
        "certificate verify failed",
    ),
    "not a number for the port": (
        lambda pg, admin: f"postgresql://postgres:{PASSWORD}@127.0.0.1:fivefour/postgres",
        EXIT_CONFIG,
        "is not a PostgreSQL URL",
    ),
    "another scheme": (
        lambda pg, admin: f"mysql://root:{PASSWORD}@127.0.0.1/app",
        EXIT_CONFIG,
        "is not a PostgreSQL URL",
    ),
    "password in a parameter": (
        lambda pg, admin: f"postgresql://127.0.0.1:5432/db?password={PASSWORD}&sslmode=sometimes",
        EXIT_CONFIG,
        "sslmode",
    ),
}


@pytest.mark.parametrize("command", [[], ["migrate"]], ids=["serve", "migrate"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_database_url_is_one_line_and_the_documented_exit_code(
    private_pg: PrivatePostgres, pg_admin_dsn: str, case: str, command: list[str]
) -> None:
    make_url, code, says = CASES[case]
    url = make_url(private_pg, pg_admin_dsn)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "PG"))},
        "DATABASE_URL": url,
        "ENTITLEMENTS_LISTEN": "127.0.0.1:0",
        "ENTITLEMENTS_METRICS_LISTEN": "off",
    }
    done = subprocess.run(
        [str(SCRIPTS / "entitlements-service"), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1, done.stderr
    assert "DATABASE_URL=" in lines[0] and says in lines[0], lines[0]
    assert PASSWORD not in done.stderr + done.stdout
    assert done.stdout == ""
