"""One way to read settings from the environment, shared by the service, the gateway and the
CLI: every read validates its value and a wrong one raises `ConfigError` naming the variable;
an unset or blank variable takes its default. Addresses are checked alike everywhere
(`host:port`, a host and a port 0…65535)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from entitlements_common.settings import ConfigError, split_secrets

E = TypeVar("E", bound=Enum)

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def host_port(name: str, raw: str) -> str:
    """`raw` as `host:port` (IPv6 in brackets), or a ConfigError naming `name`."""
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} must be host:port, got {raw!r}")
    return value


class Env:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def raw(self, name: str) -> str | None:
        """The value as set (None when unset or blank)."""
        value = self._env.get(name)
        return value if value and value.strip() else None

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return value.strip() if value is not None else default

    def address(self, name: str, default: str) -> str:
        return host_port(name, self.raw(name) or default)

    def optional_address(self, name: str, default: str | None = None) -> str | None:
        """An address, or None: unset gives `default`, "off" gives None."""
        value = self.raw(name)
        if value is None:
            return default
        if value.strip().lower() == "off":
            return None
        return host_port(name, value)

    def integer(
        self, name: str, default: int, minimum: int = 1, maximum: int | None = None, unit: str = ""
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        text = value.strip()
        number = int(text) if text.isascii() and text.isdigit() else minimum - 1
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"[{minimum}, {maximum}]" if maximum is not None else f"{minimum} or more"
            what = f"a whole number{' of ' + unit if unit else ''}"
            raise ConfigError(f"{name} must be {what} in {bound}, got {value!r}")
        return number

    def seconds(self, name: str, default: float, maximum: float = 86_400.0) -> float:
        """A positive number of seconds, at most `maximum`."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0 < number <= maximum:
            raise ConfigError(
                f"{name} must be a number of seconds in (0, {maximum:g}], got {value!r}"
            )
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = (self.raw(name) or "").strip().lower()
        if not value:
            return default
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, kind: type[E], default: E) -> E:
        value = (self.raw(name) or str(default.value)).strip()
        try:
            return kind(value.lower())
        except ValueError:
            choices = " or ".join(str(c.value) for c in kind)
            raise ConfigError(f"{name} must be {choices}, got {value!r}") from None

    def secrets(self, name: str) -> tuple[str, ...]:
        """One or more secrets (spaces or commas: several during a rotation)."""
        return tuple(split_secrets(self.raw(name)))

    def signing_secrets(self, name: str) -> tuple[str, ...]:
        """One or more Standard Webhooks / Svix `whsec_<base64>` secrets, each decoded strictly
        (a bad one is a start error, not a signature that never verifies)."""
        found = self.secrets(name)
        for i, secret in enumerate(found):
            if not signing_key(secret):
                raise ConfigError(f"{name}: secret #{i + 1} is not a whsec_<base64> signing secret")
        return found


def signing_key(secret: str) -> bytes:
    """The key a `whsec_<base64>` secret holds (empty when it holds none)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:  # binascii.Error: not base64
        return b""
