"""The gRPC port's bounds as settings and as the pieces the interceptor uses."""

from __future__ import annotations

import grpc
import pytest

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_common.settings import ConfigError
from service.config import ServiceSettings
from service.entrypoints.grpc_api.receiving import UNDECODABLE, capped_deserializer
from service.entrypoints.memory_release import release_free_memory
from service.entrypoints.message_limits import (
    BATCH_MESSAGE_BYTES,
    LARGEST_MESSAGE_BYTES,
    READ_MESSAGE_BYTES,
    SYNC_MESSAGE_BYTES,
    TOO_LARGE_MESSAGE,
    WATCH_MAX_SUBJECTS,
    WATCH_MESSAGE_BYTES,
    request_cap,
)

pytestmark = pytest.mark.unit

ENTITLEMENTS = "/entitlements.v1.EntitlementService/"


def test_each_method_has_its_cap_and_the_receive_limit_is_the_largest() -> None:
    assert request_cap(ENTITLEMENTS + "CanUse") == READ_MESSAGE_BYTES == 64 * 1024
    assert request_cap(ENTITLEMENTS + "GetEntitlements") == READ_MESSAGE_BYTES
    assert request_cap(ENTITLEMENTS + "WatchEntitlements") == WATCH_MESSAGE_BYTES
    assert request_cap(ENTITLEMENTS + "BatchCanUse") == BATCH_MESSAGE_BYTES
    assert request_cap("/entitlements.v1.BillingSyncService/ApplyBillingEvent") == (
        SYNC_MESSAGE_BYTES
    )
    assert request_cap("/grpc.health.v1.Health/Check") == READ_MESSAGE_BYTES
    assert (
        max(READ_MESSAGE_BYTES, WATCH_MESSAGE_BYTES, BATCH_MESSAGE_BYTES, SYNC_MESSAGE_BYTES)
        == LARGEST_MESSAGE_BYTES
    )


def test_the_deserializer_refuses_over_the_cap_before_parsing_and_never_raises() -> None:
    deserialize = capped_deserializer(pb.CanUseRequest.FromString, ENTITLEMENTS + "CanUse")
    assert deserialize is not None
    ok = pb.CanUseRequest(subject="user_1", feature="dataExport").SerializeToString()
    assert deserialize(ok) == pb.CanUseRequest(subject="user_1", feature="dataExport")
    refused = deserialize(b"\xff" * (READ_MESSAGE_BYTES + 1))  # unparseable, but too large first
    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.message == TOO_LARGE_MESSAGE
    assert deserialize(b"\xff\xff") is UNDECODABLE


def test_bounds_are_read_from_the_environment_and_checked_naming_the_variable() -> None:
    defaults = ServiceSettings.from_env({})
    assert defaults.watch_max_subjects == WATCH_MAX_SUBJECTS == 10_000
    assert defaults.max_receiving == 128
    assert defaults.max_concurrent_rpcs == defaults.watch_max_streams + 2_000
    settings = ServiceSettings.from_env(
        {
            "ENTITLEMENTS_WATCH_MAX_SUBJECTS": "50",
            "ENTITLEMENTS_GRPC_MAX_RECEIVING": "16",
            "ENTITLEMENTS_WATCH_MAX_STREAMS": "100",
            "ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS": "300",
        }
    )
    assert (settings.watch_max_subjects, settings.max_receiving) == (50, 16)
    assert settings.max_concurrent_rpcs == 300
    for name, value in (
        ("ENTITLEMENTS_WATCH_MAX_SUBJECTS", "0"),
        ("ENTITLEMENTS_GRPC_MAX_RECEIVING", "-1"),
        ("ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS", "many"),
    ):
        with pytest.raises(ConfigError, match=name):
            ServiceSettings.from_env({name: value})
    with pytest.raises(ConfigError, match="ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS"):
        ServiceSettings.from_env({"ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS": "10000"})


def test_freed_memory_can_be_given_back_on_glibc() -> None:
    import platform

    expected = platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is expected
