"""The floor: a grpc.aio server whose CanUse and Consume do nothing but return a constant
answer (what grpc.aio itself costs per call, for bench/run.py and bench/consume.py)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from grpc import aio

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc

ANSWER = pb.CanUseResponse(allowed=True, plan="pro", reason=pb.REASON_FEATURE_IN_PLAN)
CONSUMED = usage_pb.ConsumeResponse(allowed=True, used=1, remaining=499)


class NoopServicer(pb_grpc.EntitlementServiceServicer):
    async def CanUse(self, request: pb.CanUseRequest, context: Any) -> pb.CanUseResponse:
        return ANSWER


class NoopUsage(usage_grpc.UsageServiceServicer):
    async def Consume(
        self, request: usage_pb.ConsumeRequest, context: Any
    ) -> usage_pb.ConsumeResponse:
        return CONSUMED


async def main(listen: str) -> None:
    server = aio.server()
    pb_grpc.add_EntitlementServiceServicer_to_server(NoopServicer(), server)  # type: ignore[abstract]
    usage_grpc.add_UsageServiceServicer_to_server(NoopUsage(), server)  # type: ignore[abstract]
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
