"""A grpcurl-like client built only from server reflection: no proto files, no stubs.

The README's grpcurl session makes the same calls; these tests keep it true.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class ReflectionClient:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def close(self) -> None:
        self.channel.close()

    def list(self) -> list[str]:
        """`grpcurl -plaintext HOST list`"""
        return sorted(self.db.get_services())

    def call(
        self,
        method: str,
        data: dict[str, Any] | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, Any]:
        """`grpcurl -plaintext -d JSON HOST package.Service/Method`"""
        service_name, method_name = method.rsplit("/", 1)
        service = self.pool.FindServiceByName(service_name)
        m = service.methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(m.input_type)
        response_cls = message_factory.GetMessageClass(m.output_type)
        request = json_format.Parse(json.dumps(data or {}), request_cls())
        rpc: Any = self.channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = rpc(request, metadata=metadata, timeout=10)
        result: dict[str, Any] = json_format.MessageToDict(response)
        return result
