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


def test_the_http_bounds_default_and_refuse_nonsense_naming_the_variable() -> None:
    settings = ServiceSettings.from_env({})
    assert settings.http_header_timeout_seconds == 5.0
    assert settings.http_body_timeout_seconds == 10.0
    assert settings.http_body_budget_bytes == 16 * 1024 * 1024
    custom = ServiceSettings.from_env(
        {
            "ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS": "0.5",
            "ENTITLEMENTS_HTTP_BODY_TIMEOUT_SECONDS": "2",
            "ENTITLEMENTS_HTTP_BODY_BUDGET_BYTES": "1048576",
        }
    )
    assert (custom.http_header_timeout_seconds, custom.http_body_timeout_seconds) == (0.5, 2.0)
    assert custom.http_body_budget_bytes == 1024 * 1024
    for name in (
        "ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS",
        "ENTITLEMENTS_HTTP_BODY_TIMEOUT_SECONDS",
    ):
        for bad in ("0", "-1", "soon", "nan", "inf"):
            with pytest.raises(ConfigError, match=name):
                ServiceSettings.from_env({name: bad})
    with pytest.raises(ConfigError, match="ENTITLEMENTS_HTTP_BODY_BUDGET_BYTES"):
        ServiceSettings.from_env({"ENTITLEMENTS_HTTP_BODY_BUDGET_BYTES": "lots"})
