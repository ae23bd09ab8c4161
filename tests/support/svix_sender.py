"""A Svix-like sender: signs with the real `svix` library, delivers at least once (retries any
non-2xx, timeout or connection error with a shortened Svix backoff), re-delivers some messages
after success, shuffles order within a window, and runs several senders concurrently."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from svix.webhooks import Webhook

# Svix retries immediately, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; shortened here.
BACKOFF_SECONDS = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0)


@dataclass
class Message:
    msg_id: str
    body: bytes


@dataclass
class SenderStats:
    attempts: int = 0
    retries: int = 0
    duplicates_sent: int = 0
    failed: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


class SvixLikeSender:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        senders: int = 8,
        duplicate_rate: float = 0.1,
        shuffle_window: int = 20,
        give_up_after_seconds: float = 120.0,
        seed: int = 0,
    ) -> None:
        self.url = url
        self._webhook = Webhook(secret)
        self.senders = senders
        self.duplicate_rate = duplicate_rate
        self.shuffle_window = shuffle_window
        self.give_up_after = give_up_after_seconds
        self._random = random.Random(seed)
        self.stats = SenderStats()

    def _headers(self, message: Message) -> dict[str, str]:
        now = datetime.now(UTC)  # every attempt is signed afresh, as Svix does
        return {
            "svix-id": message.msg_id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": self._webhook.sign(message.msg_id, now, message.body.decode()),
            "content-type": "application/json",
        }

    def shuffled(self, messages: list[Message]) -> list[Message]:
        out: list[Message] = []
        for start in range(0, len(messages), self.shuffle_window):
            window = messages[start : start + self.shuffle_window]
            self._random.shuffle(window)
            out.extend(window)
        return out

    async def _attempt(self, session: aiohttp.ClientSession, message: Message) -> int:
        self.stats.attempts += 1
        try:
            async with session.post(
                self.url,
                data=message.body,
                headers=self._headers(message),
                timeout=aiohttp.ClientTimeout(total=15),
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = 0
        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        return status

    async def _deliver(self, session: aiohttp.ClientSession, message: Message) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        tries = 0
        while True:
            status = await self._attempt(session, message)
            if 200 <= status < 300:
                break
            if loop.time() > deadline:
                self.stats.failed.append(message.msg_id)
                return
            self.stats.retries += 1
            await asyncio.sleep(BACKOFF_SECONDS[min(tries, len(BACKOFF_SECONDS) - 1)])
            tries += 1
        if self._random.random() < self.duplicate_rate:  # at-least-once: send it again
            self.stats.duplicates_sent += 1
            await self._deliver_once_more(session, message, deadline)

    async def _deliver_once_more(
        self, session: aiohttp.ClientSession, message: Message, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        while not 200 <= await self._attempt(session, message) < 300:
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.2)

    async def send_all(self, messages: list[Message]) -> SenderStats:
        queue: asyncio.Queue[Message] = asyncio.Queue()
        for message in self.shuffled(list(messages)):
            queue.put_nowait(message)

        async def sender(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                await self._deliver(session, queue.get_nowait())

        connector = aiohttp.TCPConnector(force_close=True)  # survive gateway restarts
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(sender(session) for _ in range(self.senders)))
        return self.stats
