"""N idle WatchEntitlements streams in a process of their own (the benchmark's load).

`python bench/watchers.py TARGET N SUBJECT`: opens N streams filtered to SUBJECT (which never
changes), prints "ready N" once every stream has had its first heartbeat, counts heartbeats,
and runs until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc


async def main(target: str, n: int, subject: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ready = 0
    first = asyncio.Event()
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, n // 100))]

    async def watch(i: int) -> None:
        nonlocal ready
        stub = pb_grpc.EntitlementServiceStub(channels[i % len(channels)])
        counted = False
        async for message in stub.WatchEntitlements(
            pb.WatchEntitlementsRequest(subjects=[subject])
        ):
            if not message.subject and not counted:
                counted = True
                ready += 1
                if ready == n:
                    first.set()

    tasks = [asyncio.create_task(watch(i)) for i in range(n)]
    await first.wait()
    print(f"ready {n}", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
