"""A server whose start fails half-way (a listener after gRPC cannot bind) stops what it had
started, in its own loop: the gRPC port is free again at once, and no started grpc.aio server
is left for the garbage collector to stop after the loop closed (which made pytest report an
INTERNALERROR and hang when `make test` ran beside `make run`)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from entitlements_common.settings import ConfigError
from service.adapters.postgres.store import Store
from service.config import ServiceSettings, load_catalog
from service.entrypoints.launch import PortInUse
from service.entrypoints.server import start_server
from tests.support import SYNC_SECRET, Clock
from tests.support.service_process import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("listener", ["metrics_listen", "http_listen"])
async def test_a_listener_that_cannot_bind_stops_the_grpc_server(
    database_url: str, listener: str
) -> None:
    grpc_port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        settings = ServiceSettings(
            database_url=database_url,
            listen=f"127.0.0.1:{grpc_port}",
            catalog_path=None,
            sync_secret=SYNC_SECRET,
            data_dir=Path(".data"),
        )
        if listener == "http_listen":
            settings = replace(settings, http_listen=taken)
        else:
            settings = replace(settings, metrics_listen=taken)
        store = await Store.open(database_url)
        try:
            with pytest.raises((PortInUse, ConfigError)) as failed:  # as main() reports them
                await start_server(settings, load_catalog(None), store, Clock())
            # At once, with the failure still held (its frames keep the server object alive):
            # stopped by start_server itself, not by the garbage collector later.
            with socket.socket() as again:
                again.bind(("127.0.0.1", grpc_port))
            assert failed.value
        finally:
            await store.close()
