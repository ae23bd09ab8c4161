"""TLS and mutual TLS on the gRPC server, and the gateway's forwarder as a TLS client: a client
without a valid certificate is refused."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_client import ClientConfigError, Tls
from entitlements_common.settings import ConfigError
from entitlements_common.tls import ServerTls
from service.adapters.postgres.store import Store
from service.config import ServiceSettings, load_catalog
from service.entrypoints.server import RunningServer, start_server
from tests.support import SYNC_SECRET, Clock, event, now_ms
from tests.support.tls_material import TlsFiles, make_tls_files
from webhook_gateway.config import client_tls as client_tls_settings
from webhook_gateway.forwarding import Forwarder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def server_tls(files: TlsFiles, mutual: bool) -> ServerTls | None:
    env = {
        "ENTITLEMENTS_TLS_CERT": str(files.server_cert),
        "ENTITLEMENTS_TLS_KEY": str(files.server_key),
    }
    if mutual:
        env["ENTITLEMENTS_TLS_CLIENT_CA"] = str(files.ca)
    return ServerTls.from_env(env)


async def running(database_url: str, tls: ServerTls | None) -> AsyncIterator[RunningServer]:
    catalog = load_catalog(None)
    store = await Store.open(database_url)
    settings = replace(
        ServiceSettings.from_env(  # no metrics endpoint: its default is make run's port
            {"BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET, "ENTITLEMENTS_METRICS_LISTEN": "off"}
        ),
        listen="127.0.0.1:0",
        database_url=database_url,
        tls=tls,
    )
    server = await start_server(settings, catalog, store, Clock())
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def mtls_server(database_url: str, tls_files: TlsFiles) -> AsyncIterator[RunningServer]:
    async for server in running(database_url, server_tls(tls_files, mutual=True)):
        yield server


def client_tls(files: TlsFiles, cert: Path | None, key: Path | None) -> Tls:
    env = {"ENTITLEMENTS_TLS_CA": str(files.ca)}
    if cert and key:
        env |= {"ENTITLEMENTS_TLS_CLIENT_CERT": str(cert), "ENTITLEMENTS_TLS_CLIENT_KEY": str(key)}
    tls = Tls.from_env(env)
    assert tls is not None
    return tls


async def can_use(target: str, tls: Tls | None) -> pb.CanUseResponse:
    creds = tls.credentials() if tls else None
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        stub = pb_grpc.EntitlementServiceStub(channel)
        response: pb.CanUseResponse = await stub.CanUse(
            pb.CanUseRequest(subject="user_tls", feature="aiInsights"), timeout=5
        )
        return response


async def test_mutual_tls_accepts_a_client_with_a_valid_certificate(
    mtls_server: RunningServer, tls_files: TlsFiles
) -> None:
    target = f"localhost:{mtls_server.port}"
    tls = client_tls(tls_files, tls_files.client_cert, tls_files.client_key)
    assert (await can_use(target, tls)).allowed


@pytest.mark.parametrize("client", ["plaintext", "no_certificate", "certificate_from_another_ca"])
async def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    mtls_server: RunningServer, tls_files: TlsFiles, client: str
) -> None:
    target = f"localhost:{mtls_server.port}"
    tls: Tls | None = {
        "plaintext": None,
        "no_certificate": client_tls(tls_files, None, None),
        "certificate_from_another_ca": client_tls(
            tls_files, tls_files.rogue_client_cert, tls_files.rogue_client_key
        ),
    }[client]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await can_use(target, tls)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_tls_without_client_certificates(
    database_url: str, tls_files: TlsFiles
) -> None:
    async for server in running(database_url, server_tls(tls_files, mutual=False)):
        target = f"localhost:{server.port}"
        assert (await can_use(target, client_tls(tls_files, None, None))).allowed
        with pytest.raises(grpc.aio.AioRpcError):
            await can_use(target, None)


async def test_gateway_forwarder_over_mutual_tls(
    mtls_server: RunningServer, tls_files: TlsFiles
) -> None:
    tls = client_tls(tls_files, tls_files.client_cert, tls_files.client_key)
    forwarder = Forwarder(f"localhost:{mtls_server.port}", SYNC_SECRET, 5, tls)
    try:
        subject = f"user_tlsfwd_{secrets.token_hex(4)}"
        body = json.dumps(event("item_active_pro_month", at_ms=now_ms(), subject=subject)).encode()
        result = await forwarder.forward("msg_" + secrets.token_hex(8), "", body, now_ms() // 1000)
        assert (result.outcome, result.plan) == ("APPLIED", "pro")
        assert await forwarder.service_ready()
    finally:
        await forwarder.close()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ENTITLEMENTS_TLS_CERT": "/x.pem"}, "ENTITLEMENTS_TLS_CERT"),
        ({"ENTITLEMENTS_TLS_CLIENT_CA": "{ca}"}, "ENTITLEMENTS_TLS_CLIENT_CA"),
    ],
)
def test_incomplete_server_tls_settings_are_refused(
    tls_files: TlsFiles, env: dict[str, str], variable: str
) -> None:
    env = {k: v.format(ca=tls_files.ca) for k, v in env.items()}
    with pytest.raises(ConfigError, match=variable):
        ServerTls.from_env(env)


def test_incomplete_client_tls_settings_are_refused(tls_files: TlsFiles) -> None:
    """The client library reads them (`Tls.from_env`); the gateway refuses them as a
    ConfigError naming the variable, as every setting of its own."""
    with pytest.raises(ConfigError, match="ENTITLEMENTS_TLS_CLIENT_CERT"):
        client_tls_settings({"ENTITLEMENTS_TLS_CLIENT_CERT": str(tls_files.client_cert)})
    with pytest.raises(ConfigError, match="ENTITLEMENTS_TLS_CLIENT_KEY"):
        client_tls_settings(
            {
                "ENTITLEMENTS_TLS_CA": str(tls_files.ca),
                "ENTITLEMENTS_TLS_CLIENT_CERT": str(tls_files.client_cert),
            }
        )
    with pytest.raises(ConfigError, match="ENTITLEMENTS_TLS_CA=/nowhere: cannot be read"):
        client_tls_settings({"ENTITLEMENTS_TLS_CA": "/nowhere"})
    with pytest.raises(ClientConfigError, match="ENTITLEMENTS_TLS_CLIENT_KEY"):
        Tls.from_env({"ENTITLEMENTS_TLS_CLIENT_KEY": "/x.pem", "ENTITLEMENTS_TLS_CA": "/y.pem"})


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_both_clients_over_tls_and_mutual_tls(
    database_url: str, tls_files: TlsFiles, mutual: bool
) -> None:
    """The client library speaks TLS and mutual TLS (the CLI's settings); with a local cache
    its watch stream runs over the same secure channel."""
    import asyncio

    from entitlements_client import AsyncEntitlementsClient, EntitlementsClient, Unavailable

    env = {"ENTITLEMENTS_TLS_CA": str(tls_files.ca)}
    if mutual:
        env |= {
            "ENTITLEMENTS_TLS_CLIENT_CERT": str(tls_files.client_cert),
            "ENTITLEMENTS_TLS_CLIENT_KEY": str(tls_files.client_key),
        }
    tls = Tls.from_env(env)
    assert tls is not None
    async for server in running(database_url, server_tls(tls_files, mutual=mutual)):
        target = f"localhost:{server.port}"
        async with AsyncEntitlementsClient(target, tls=tls, local_cache=True) as client:
            async with asyncio.timeout(10):
                await client.wait_synced()
            assert await client.can_use("user_tls_async", "aiInsights")

        def sync_checks(target: str = target) -> bool:
            with EntitlementsClient(target, tls=tls, local_cache=True) as client:
                assert client.wait_synced(10)
                return client.can_use("user_tls_sync", "aiInsights")

        assert await asyncio.to_thread(sync_checks)
        if mutual:  # without a client certificate the same client is refused
            bare = Tls.from_files(tls_files.ca)
            async with AsyncEntitlementsClient(target, tls=bare) as client:
                with pytest.raises(Unavailable):
                    await client.can_use("user_tls_async", "aiInsights")
