"""The floor: a grpc.aio server whose CanUse does nothing but return a constant answer."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from grpc import aio

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc

ANSWER = pb.CanUseResponse(allowed=True, plan="pro", reason=pb.REASON_FEATURE_IN_PLAN)


class NoopServicer(pb_grpc.EntitlementServiceServicer):
    async def CanUse(self, request: pb.CanUseRequest, context: Any) -> pb.CanUseResponse:
        return ANSWER


async def main(listen: str) -> None:
    server = aio.server()
    pb_grpc.add_EntitlementServiceServicer_to_server(NoopServicer(), server)  # type: ignore[abstract]
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
