"""`make test` runs beside `make run`: tests/conftest.py holds make run's ports for the whole
session, so a test, or a process it starts, that lands on one fails at once in every run (not
only when a dev stack happens to be up)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess

import pytest

from service.entrypoints.launch import EXIT_PORT_IN_USE
from tests.conftest import MAKE_RUN_PORTS
from tests.support.service_process import SCRIPTS

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("port", MAKE_RUN_PORTS)
def test_make_run_s_ports_are_taken_during_the_tests(port: int) -> None:
    with socket.socket() as probe, pytest.raises(OSError) as taken:
        probe.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE


def test_a_service_started_on_a_default_port_fails_at_once(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    del env["ENTITLEMENTS_METRICS_LISTEN"]  # the default: 127.0.0.1:9464
    env["ENTITLEMENTS_LISTEN"] = "127.0.0.1:0"
    done = subprocess.run(
        [str(SCRIPTS / "entitlements-service")], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == EXIT_PORT_IN_USE
    assert done.stderr == "entitlements-service: 127.0.0.1:9464 is already in use\n"
