"""The benchmark scripts' shared timing protocol (benchmarks/common.py)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from common import Timings, bind, interleaved, write_json  # noqa: E402


def test_interleaved_rotates_start_and_times_every_round():
    calls = []
    fns = {name: (lambda n: lambda: calls.append(n))(name) for name in "abc"}
    t = interleaved(fns, rounds=4, warmup=1, pause_s=0)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, in order
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert all(len(v) == 4 for v in t.wall.values()) and all(len(v) == 4 for v in t.cpu.values())
    assert all(x >= 0 for v in t.wall.values() for x in v)


def test_interleaved_syncs_around_each_run():
    log = []
    interleaved({"a": lambda: log.append("run")}, rounds=2, warmup=0, pause_s=0, sync=lambda: log.append("sync"))
    assert log == ["sync", "run", "sync", "run", "sync"]


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # The machine slows down 3x from round 3 on, for both callables alike: A is 1.5x B within every
    # round but the first slow round, which caught B slow and A not yet.  The paired median says 1.5;
    # the ratio of medians (15 / 30) says A is twice as fast as B.
    a = [15.0, 15.0, 15.0, 45.0, 45.0]
    b = [10.0, 10.0, 30.0, 30.0, 30.0]
    t = Timings(wall={"a": a, "b": b}, cpu={"a": a, "b": b})
    r = t.ratio("a", "b")
    assert r == {"paired_median": 1.5, "paired_min": 0.5, "paired_max": 1.5, "of_medians": 0.5}
    assert t.ratio("a", "b", clock="cpu") == r
    assert t.median("a") == 15.0 and t.medians() == {"a": 15.0, "b": 30.0}


def test_bad_arguments():
    with pytest.raises(ValueError):
        interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError):
        Timings({"a": [1.0]}, {"a": [1.0]}).median("a", clock="gpu")


def test_write_json_is_atomic(tmp_path):
    out = tmp_path / "sub" / "r.json"
    write_json({"x": 1}, out)
    assert json.loads(out.read_text()) == {"x": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_bind_fixes_the_argument():
    seen = []
    fns = bind({"a": lambda x: seen.append(("a", x)), "b": lambda x: seen.append(("b", x))}, 7)
    fns["b"]()
    fns["a"]()
    assert seen == [("b", 7), ("a", 7)]
