"""ENTITLEMENTS_HTTP_LISTEN: off when unset, host:port otherwise, and a clear refusal naming
the variable for anything else."""

from __future__ import annotations

import pytest

from entitlements_common.settings import ConfigError
from service.config import ServiceSettings

pytestmark = pytest.mark.unit


def test_off_when_unset_or_empty() -> None:
    assert ServiceSettings.from_env({}).http_listen is None
    assert ServiceSettings.from_env({"ENTITLEMENTS_HTTP_LISTEN": " "}).http_listen is None


@pytest.mark.parametrize("value", ["127.0.0.1:8081", "0.0.0.0:0", "[::1]:8081", "localhost:80"])
def test_host_and_port(value: str) -> None:
    assert ServiceSettings.from_env({"ENTITLEMENTS_HTTP_LISTEN": value}).http_listen == value


@pytest.mark.parametrize("value", ["8081", "localhost", ":8081", "host:http", "host:70000"])
def test_anything_else_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="ENTITLEMENTS_HTTP_LISTEN must be host:port"):
        ServiceSettings.from_env({"ENTITLEMENTS_HTTP_LISTEN": value})


def test_a_single_process_http_listener_refuses_a_held_port() -> None:
    """Without --workers there is no SO_REUSEPORT: a second listener on a held port is an
    error naming the variable, not a silent split of the callers between two services."""
    from service.entrypoints.connect_api import listen_socket

    with listen_socket("127.0.0.1:0") as first:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError, match="ENTITLEMENTS_HTTP_LISTEN"):
            listen_socket(f"127.0.0.1:{port}")
    # --workers: each worker binds the same port on purpose.
    with listen_socket("127.0.0.1:0", True) as first:
        port = first.getsockname()[1]
        with listen_socket(f"127.0.0.1:{port}", True) as second:
            assert second.getsockname()[1] == port
