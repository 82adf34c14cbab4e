"""PerSizeCache on its own (no model): building, the most recently used sizes, background mode, failures."""

from __future__ import annotations

import threading
import time

import pytest

from acmix_deploy.runtime.per_size import SPECIALIZE_AFTER, PerSizeCache


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_builds_at_first_sight_and_keeps_the_most_recently_used():
    built = []
    cache = PerSizeCache(lambda hw: built.append(hw) or f"handle{hw}", capacity=2)
    assert cache.get((8, 8)) == "handle(8, 8)" and cache.get((8, 8)) == "handle(8, 8)"
    assert cache.get((16, 8)) == "handle(16, 8)"
    cache.get((8, 8))  # (16, 8) is now the least recently used
    assert cache.get((24, 24)) == "handle(24, 24)"
    assert cache.sizes == [(8, 8), (24, 24)] and built == [(8, 8), (16, 8), (24, 24)]


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


def test_a_failed_build_warns_once_and_stays_on_the_general_handle():
    calls = []

    def build(hw):
        calls.append(hw)
        raise RuntimeError("no such luck")

    cache = PerSizeCache(build, capacity=2, what="m.onnx")
    with pytest.warns(UserWarning, match="m.onnx: nothing specialised to 8x16 .*no such luck"):
        assert cache.get((8, 16)) is None
    assert cache.get((8, 16)) is None and calls == [(8, 16)] and cache.sizes == []


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        PerSizeCache(lambda hw: hw, capacity=0)
