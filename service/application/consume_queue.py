"""Group commit for Consume: calls that wait at the same moment share one transaction.

One Consume alone costs a transaction of five round trips while it holds its counter's row lock,
so calls on one hot subject were serialised at a few hundred a second, and every call paid its
own commit. Here a call joins a queue; up to `writers` flushers each take what has queued (at
most `batch` calls) and run it as one unit of work: the counters locked in one statement (in
key order, so batches never wait on each other in a cycle), the calls applied in arrival order
by the domain (`consume_in_order`, each as if alone), everything saved in one statement and one
commit. While one batch commits the next one gathers, so the batch grows with the load and
costs nothing when idle (a lone call is a batch of one, started at once).

Under load a batch also waits for its turn: the next batch starts no sooner than `gather` seconds
(5 ms) after the one before it began (PostgreSQL's commit_delay, for the same reason). Without
it batches stayed at mostly 4 to 7 calls even with 64 in flight: the backlog waits upstream, in the
event loop and grpc, not in this queue, so the flusher found few calls at each look, and every
batch costs its five round trips whatever its size. The wait applies only after a batch of
more than one call (so a lone call is never delayed) and never when a full batch is waiting
(README, Benchmarks: Consume).

Two flushers by default, on one cadence: a batch starts no sooner than `gather` after the
previous one (either flusher's) began, so two flushers make as many batches as one, of the
same size, while a slow transaction no longer holds up the batch behind it: that one runs
beside it on another connection (on one hot subject it then waits for the counter's row lock
in PostgreSQL; the counters are locked in key order, so never in a cycle). Measured side by
side at 2 000 Consumes/s over 10 000 subjects (a throwaway script, README, Benchmarks:
Consume): p99 10.6-13.1 ms against one flusher's 12.3-20.4 in eight runs each, and the same
closed-loop throughput. Before the cadence was shared, a second flusher started on the first
call to arrive and split the batches.

A caller that gave up before its batch started is left out; one that gives up while its batch
runs is still recorded (its retry with the same key gets that answer, counted once). A failed
transaction fails every call of its batch with the same error (retryable: nothing was stored).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque

from service.application.ports import Clock, Transactions, UnitOfWork
from service.domain.consumption import ConsumeCall, consume_in_order
from service.domain.usage import Answer

Result = tuple[Answer, bool]

# Under load, the least time from one batch's start to the next one's, either flusher's (above).
GATHER_SECONDS = 0.005
# Flushers (see above).
WRITERS = 2


class ConsumeQueue:
    def __init__(
        self,
        transactions: Transactions,
        clock: Clock,
        *,
        batch: int = 256,
        writers: int = WRITERS,
        gather: float = GATHER_SECONDS,
    ) -> None:
        self._tx = transactions
        self._clock = clock
        self._batch = batch
        self._writers = writers
        self._gather = gather
        self._pending: deque[tuple[ConsumeCall, asyncio.Future[Result]]] = deque()
        self._writing = 0  # flushers between their start and their last look at the queue
        self._due = 0.0  # the loop's time before which no batch starts (0: at once)
        self._tasks: set[asyncio.Task[None]] = set()

    async def consume(self, call: ConsumeCall) -> Result:
        """Queue the call and wait for its batch's answer."""
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((call, answer))
        if self._writing < self._writers:
            self._writing += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await answer

    def _take(self) -> list[tuple[ConsumeCall, asyncio.Future[Result]]]:
        taken: list[tuple[ConsumeCall, asyncio.Future[Result]]] = []
        while self._pending and len(taken) < self._batch:
            call, answer = self._pending.popleft()
            if not answer.done():  # a caller that gave up is left out
                taken.append((call, answer))
        return taken

    async def _flush(self) -> None:
        try:
            await self._drain()
        except asyncio.CancelledError:  # stopped (waiting for its turn or in a transaction):
            while self._pending:  # the calls still queued are cancelled, not stranded
                self._pending.popleft()[1].cancel()
            raise
        finally:  # with no await between the empty queue and here: a call queued since finds
            self._writing -= 1  # this flusher gone and starts another

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Wait for the turn unless a full batch waits; an empty queue ends this flusher at
            # once (a call queued later starts another).
            if self._pending and len(self._pending) < self._batch and loop.time() < self._due:
                await asyncio.sleep(self._due - loop.time())
                continue  # look again: the other flusher may have taken them and set a later turn
            taken = self._take()
            if not taken:
                return
            self._due = loop.time() + self._gather if len(taken) > 1 else 0.0
            calls = [call for call, _ in taken]
            try:
                results = await self._tx.run(functools.partial(self._apply, calls=calls))
            except asyncio.CancelledError:
                for _, answer in taken:
                    answer.cancel()
                raise
            except Exception as exc:  # broad on purpose: every waiter gets the batch's error
                for _, answer in taken:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, answer), result in zip(taken, results, strict=True):
                if not answer.done():
                    answer.set_result(result)

    async def _apply(self, uow: UnitOfWork, *, calls: list[ConsumeCall]) -> list[Result]:
        now = self._clock.now_ms()
        counters = {(c.subject, c.meter): c.period for c in calls}
        locked, priors = await uow.usage.lock_many(
            [(s, m, p) for (s, m), p in sorted(counters.items(), key=lambda kv: kv[0])],
            [(c.subject, c.meter, c.key) for c in calls],
            now,
        )
        results, records = consume_in_order(calls, locked, priors, now)
        if records:
            await uow.usage.save_many(records, now)
        return results
