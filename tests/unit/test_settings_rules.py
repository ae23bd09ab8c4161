"""Every part reads a setting by one rule (entitlements_common.env): the CLI through `Env`
itself, the client library — which installs alone and cannot import it — by its own copy of
the blank rule, proven equal here."""

from __future__ import annotations

from pathlib import Path

import pytest

from entitlements_cli import settings as cli_settings
from entitlements_cli.errors import ConfigError as CliConfigError
from entitlements_client import _config as client_config
from entitlements_common.env import Env

pytestmark = pytest.mark.unit

VALUES = ["", " ", "\t", "\n", "x", " x ", "0", "off"]


@pytest.mark.parametrize("value", VALUES)
def test_the_client_library_takes_blank_as_unset_as_env_does(value: str) -> None:
    env = {"ENTITLEMENTS_TLS_CA": value}
    assert (client_config._set(env, "ENTITLEMENTS_TLS_CA") is None) == (
        Env(env).raw("ENTITLEMENTS_TLS_CA") is None
    )


def test_a_blank_tls_variable_is_unset_for_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a CA variable of spaces made the client read a file named "  ".
    assert client_config.Tls.from_env({"ENTITLEMENTS_TLS_CA": "  "}) is None


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENTITLEMENTS_DATA_DIR", str(tmp_path))
    for name in ("ENTITLEMENTS_TARGET", "ENTITLEMENTS_READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_cli_takes_the_environment_over_dev_env(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_dir / "dev.env").write_text("ENTITLEMENTS_READ_TOKEN=from-file\nBROKEN LINE\n=x\n")
    assert cli_settings.setting("ENTITLEMENTS_READ_TOKEN") == "from-file"
    monkeypatch.setenv("ENTITLEMENTS_READ_TOKEN", "  ")  # blank: as if unset
    assert cli_settings.setting("ENTITLEMENTS_READ_TOKEN") == "from-file"
    monkeypatch.setenv("ENTITLEMENTS_READ_TOKEN", "from-env")
    assert cli_settings.setting("ENTITLEMENTS_READ_TOKEN") == "from-env"
    assert cli_settings.setting("NOT_SET_ANYWHERE", "default") == "default"


def test_the_cli_checks_an_address_from_dev_env_as_the_service_does(data_dir: Path) -> None:
    (data_dir / "dev.env").write_text("ENTITLEMENTS_TARGET=localhost:99999\n")
    no_flag = type("Args", (), {"target": None})()
    with pytest.raises(CliConfigError, match="ENTITLEMENTS_TARGET must be host:port"):
        cli_settings.target(no_flag)
    (data_dir / "dev.env").write_text("ENTITLEMENTS_TARGET= 127.0.0.1:7 \n")
    assert cli_settings.target(no_flag) == "127.0.0.1:7"
