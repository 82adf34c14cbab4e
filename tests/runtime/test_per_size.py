"""PerSizeCache on its own (no model): building, the most recently used sizes, background mode, failures."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

import acmix_deploy.runtime.per_size as per_size_module
from acmix_deploy.runtime.per_size import SPECIALIZE_AFTER, PerSizeCache


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_builds_at_first_sight_while_there_is_room_then_replaces_only_for_busier_sizes():
    built = []
    cache = PerSizeCache(lambda hw: built.append(hw) or f"handle{hw}", capacity=2)
    assert cache.get((8, 8)) == "handle(8, 8)" and cache.get((8, 8)) == "handle(8, 8)"
    assert cache.get((16, 8)) == "handle(16, 8)"  # a free slot: built at the first request
    cache.get((8, 8))  # (16, 8) is now the least recently used, used once
    # full: a new size needs SPECIALIZE_AFTER requests and > REPLACE_MARGIN x the least recently used handle's uses
    assert [cache.get((24, 24)) for _ in range(SPECIALIZE_AFTER)] == [None] * (SPECIALIZE_AFTER - 1) + ["handle(24, 24)"]
    assert cache.sizes == [(8, 8), (24, 24)] and built == [(8, 8), (16, 8), (24, 24)]


def test_more_sizes_than_slots_do_not_rebuild_on_every_miss():
    built = []
    cache = PerSizeCache(lambda hw: built.append(hw) or hw, capacity=2)
    sizes = [(8, 8), (16, 16), (24, 24)]
    for i in range(3000):
        cache.get(sizes[i % 3])
    assert len(built) == 2, built  # the first two at once; the third size never beats twice a held one's count
    # a size that takes over the traffic gets a slot once the old counts have aged (halved per AGE_EVERY lookups)
    for _ in range(2 * per_size_module.AGE_EVERY):
        cache.get((32, 32))
    assert (32, 32) in cache.sizes and len(built) <= 5


def test_background_builds_after_repeats_one_at_a_time_and_never_blocks():
    release = threading.Event()
    built = []

    def build(hw):
        release.wait(10)
        built.append(hw)
        return hw

    cache = PerSizeCache(build, capacity=4, background=True)
    for _ in range(SPECIALIZE_AFTER - 1):
        assert cache.get((8, 8)) is None and cache.get((16, 16)) is None
    assert not cache.building
    assert cache.get((8, 8)) is None  # the repeat that starts the build; the caller goes on
    assert cache.building
    for _ in range(SPECIALIZE_AFTER):
        assert cache.get((16, 16)) is None  # a second size waits while one build runs
    release.set()
    assert _wait(lambda: cache.sizes == [(8, 8)])
    assert built == [(8, 8)] and cache.get((8, 8)) == (8, 8)


def test_a_failed_build_warns_and_stays_on_the_general_handle_until_retried():
    calls = []

    def build(hw):
        calls.append(hw)
        raise RuntimeError("no such luck")

    cache = PerSizeCache(build, capacity=2, what="m.onnx")
    with pytest.warns(UserWarning, match="m.onnx: nothing specialised to 8x16 .*no such luck"):
        assert cache.get((8, 16)) is None
    assert cache.get((8, 16)) is None and calls == [(8, 16)] and cache.sizes == [] and not cache.building
    cache._failed[(8, 16)] -= per_size_module.RETRY_AFTER_S + 1  # later on, it is tried again
    with pytest.warns(UserWarning):
        cache.get((8, 16))
    assert calls == [(8, 16), (8, 16)]


def test_a_build_that_raises_through_the_warning_does_not_leave_the_size_building():
    cache = PerSizeCache(lambda hw: 1 / 0, capacity=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # python -W error: the warning itself raises
        with pytest.raises(UserWarning):
            cache.get((8, 8))
    assert not cache.building


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        PerSizeCache(lambda hw: hw, capacity=0)


def test_uniform_random_traffic_over_more_sizes_than_slots_does_not_churn():
    import random

    built = []
    cache = PerSizeCache(lambda hw: built.append(hw) or hw, capacity=2)
    rng = random.Random(0)
    sizes = [(8, 8), (16, 16), (24, 24)]
    for _ in range(20000):
        cache.get(rng.choice(sizes))
    assert len(built) <= 3, len(built)  # with a bare "more than the victim" rule: ~150 rebuilds
