"""Start-up settings of the service: SO_REUSEPORT only for --workers, the free-port check,
ENTITLEMENTS_MIGRATE_ON_START and the NOTIFY listener's own DSN."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest

from entitlements_common.settings import ConfigError
from service.config import ServiceSettings
from service.entrypoints.launch import PortInUse, ensure_port_free, port_in_use
from service.entrypoints.server import server_options

pytestmark = pytest.mark.unit


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_single_process_does_not_set_so_reuseport_and_workers_do() -> None:
    single = ServiceSettings.from_env({})
    assert dict(server_options(single))["grpc.so_reuseport"] == 0
    assert dict(server_options(replace(single, reuse_port=True)))["grpc.so_reuseport"] == 1


def test_a_held_port_is_in_use_and_a_free_one_is_not(held_port: int) -> None:
    assert port_in_use(f"127.0.0.1:{held_port}")
    assert port_in_use(f"0.0.0.0:{held_port}")  # the wildcard overlaps the held address
    with pytest.raises(PortInUse, match=f"127.0.0.1:{held_port} is already in use"):
        ensure_port_free(f"127.0.0.1:{held_port}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert not port_in_use(f"127.0.0.1:{free}")
    assert not port_in_use("127.0.0.1:0")


def test_migrate_on_start_defaults_to_true_and_reads_false() -> None:
    assert ServiceSettings.from_env({}).migrate_on_start
    for raw in ("false", "0", "no", "off", "FALSE"):
        assert not ServiceSettings.from_env({"ENTITLEMENTS_MIGRATE_ON_START": raw}).migrate_on_start
    assert ServiceSettings.from_env({"ENTITLEMENTS_MIGRATE_ON_START": "true"}).migrate_on_start
    with pytest.raises(ConfigError, match="ENTITLEMENTS_MIGRATE_ON_START"):
        ServiceSettings.from_env({"ENTITLEMENTS_MIGRATE_ON_START": "later"})


def test_the_listener_dsn_defaults_to_none_and_is_read() -> None:
    assert ServiceSettings.from_env({}).listen_database_url is None
    dsn = "postgresql://session-pool:5432/db"
    s = ServiceSettings.from_env({"ENTITLEMENTS_LISTEN_DATABASE_URL": dsn})
    assert s.listen_database_url == dsn
