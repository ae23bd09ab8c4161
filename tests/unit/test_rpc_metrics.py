"""RPC counts kept in plain numbers reach the Prometheus series exactly, however often and
whenever they are flushed: the same buckets, sum and codes prometheus-client would have made of
each observation (bucket edges included)."""

from __future__ import annotations

import itertools

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, Histogram

from service import metrics
from service.entrypoints.rpc_metrics import UNCOUNTED, RpcSeries

pytestmark = pytest.mark.unit

_methods = itertools.count()
CODES = [None, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE]
durations = st.one_of(
    st.sampled_from([*metrics.RPC_SECONDS_BUCKETS, 0.0]),  # exactly on an edge: le includes it
    st.floats(min_value=0, max_value=100, allow_nan=False),
)
calls = st.lists(st.tuples(durations, st.sampled_from(CODES)), max_size=40)


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(calls, min_size=1, max_size=4))
def test_flushed_counts_equal_what_observing_each_call_gives(
    batches: list[list[tuple[float, grpc.StatusCode | None]]],
) -> None:
    method = f"/test.v1.Rpc/M{next(_methods)}"
    series = RpcSeries.of(method, streaming=False)
    reference = Histogram(
        "reference_seconds", "each call observed", buckets=metrics.RPC_SECONDS_BUCKETS,
        registry=None,
    )  # fmt: skip
    for batch in batches:
        for elapsed, code in batch:
            series.start()
            series.record(code, elapsed)
            reference.observe(elapsed)
        series.flush()
    labels = {"grpc_type": "unary", "grpc_service": "test.v1.Rpc", "grpc_method": method[13:]}
    total = sum(len(b) for b in batches)
    assert _sample("grpc_server_started_total", labels) == total
    assert _sample("grpc_server_handling_seconds_sum", labels) == pytest.approx(
        sum(e for b in batches for e, _ in b)
    )
    expected = {
        s.labels["le"]: s.value for s in next(iter(reference.collect())).samples if "le" in s.labels
    }
    for le, count in expected.items():
        assert _sample("grpc_server_handling_seconds_bucket", {**labels, "le": le}) == count, le
    for code in CODES:
        name = "OK" if code is None else code.name
        want = sum(1 for b in batches for _, c in b if c is code)
        assert _sample("grpc_server_handled_total", {**labels, "grpc_code": name}) == want


def test_uncounted_counts_nothing() -> None:
    before = UNCOUNTED.started
    UNCOUNTED.done(None, UNCOUNTED.start())
    UNCOUNTED.flush()
    assert UNCOUNTED.started == before and UNCOUNTED.handled == {}
