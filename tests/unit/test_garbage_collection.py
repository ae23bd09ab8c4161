"""The service's collector settings (entrypoints/garbage_collection.py): serving freezes what
start-up made and sets the young threshold; every collection's pause is counted by
generation, once however often that is asked for."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from service.entrypoints import garbage_collection

pytestmark = pytest.mark.unit


def counted(generation: int) -> tuple[float, float]:
    """Pauses counted for `generation` so far, and their total seconds."""
    labels = {"generation": str(generation)}
    return (
        REGISTRY.get_sample_value("entitlements_gc_pause_seconds_count", labels) or 0.0,
        REGISTRY.get_sample_value("entitlements_gc_pause_seconds_sum", labels) or 0.0,
    )


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector as the test found it afterwards; no automatic collection meanwhile."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks
        gc.unfreeze()


@pytest.mark.usefixtures("collector")
def test_every_collection_is_counted_by_its_generation() -> None:
    garbage_collection.record_pauses()
    before = [counted(g) for g in range(3)]
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    after = [counted(g) for g in range(3)]
    assert [a[0] - b[0] for a, b in zip(after, before, strict=True)] == [1, 0, 2]
    assert after[2][1] > before[2][1]  # a full collection takes some time


@pytest.mark.usefixtures("collector")
def test_asked_for_twice_each_collection_is_still_counted_once() -> None:
    first = garbage_collection.record_pauses()
    assert garbage_collection.record_pauses() is first
    before = counted(1)[0]
    gc.collect(1)
    assert counted(1)[0] - before == 1


@pytest.mark.usefixtures("collector")
def test_serving_freezes_start_up_and_sets_the_thresholds() -> None:
    garbage_collection.tune_garbage_collection()
    assert gc.get_threshold() == (
        garbage_collection.GC_YOUNG_THRESHOLD,
        *garbage_collection.GC_OLDER_THRESHOLDS,
    )
    assert gc.get_freeze_count() > 0
    assert any(isinstance(c, garbage_collection.PauseRecorder) for c in gc.callbacks)
