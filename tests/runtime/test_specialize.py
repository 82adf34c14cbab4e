"""OrtRunner's per-size sessions of a graph with dynamic height and width (``specialize``).

A session with the input's height and width fixed (ONNX Runtime's free dimension overrides) folds the
graph's size arithmetic into constants.  Checked: it does (the optimized graph has about as many nodes as
one exported at that size), its outputs equal the general session's within float32 rounding (TOL_F32:
the folded graph may fuse differently), a full cache gives a busier size the least recently used slot,
invalid sizes never reach a session, the server's background mode waits for repeated requests, warm-up
runs keep to the general session, and fixed-size graphs ignore it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import acmix_deploy as ad
from acmix_deploy.errors import InputShapeError
from acmix_deploy.runtime import open_runner
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, ort_optimized_nodes, rel_error

ort = pytest.importorskip("onnxruntime")

from acmix_deploy.exporters.onnx import export_onnx  # noqa: E402
from acmix_deploy.runtime import OrtRunner  # noqa: E402
from acmix_deploy.runtime.per_size import SPECIALIZE_AFTER  # noqa: E402


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """acmix_resnet_tiny (random weights and statistics): one --dynamic-hw graph traced at 32, one fixed at 40x64."""
    deploy = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 3).eval())
    tmp = tmp_path_factory.mktemp("specialize")
    export_onnx(deploy, tmp / "dyn.onnx", (3, 32, 32), dynamic_hw=True)
    export_onnx(deploy, tmp / "fixed.onnx", (3, 40, 64))
    return tmp / "dyn.onnx", tmp / "fixed.onnx"


def _optimized_nodes(path, overrides=None) -> int:
    return len(ort_optimized_nodes(path, overrides=overrides))


def test_fixed_height_and_width_fold_the_size_arithmetic(tiny_files):
    dyn, fixed = tiny_files
    general, folded, exported = (_optimized_nodes(dyn), _optimized_nodes(dyn, {"height": 40, "width": 64}),
                                 _optimized_nodes(fixed))
    assert general > exported + 200  # the in-graph tables: about 75 operators per table set, 4 sets
    assert folded <= exported + 10, (general, folded, exported)


def test_specialised_sessions_answer_like_the_general_one_and_keep_the_recent_sizes(tiny_files):
    dyn, _ = tiny_files
    general = OrtRunner(dyn)
    runner = OrtRunner(dyn, specialize=2)
    assert runner.specialize == 2 and runner.specialized_sizes == []
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(32, 32), (40, 64), (32, 32)]):
        x = rng.standard_normal((1 + i % 3, 3, h, w)).astype(np.float32)
        assert rel_error(torch.from_numpy(general.infer(x)), torch.from_numpy(runner.infer(x))) <= TOL_F32, (h, w)
        assert runner.specialized_sizes[-1] == (h, w)  # built at the first request while there is room
    # full: a third size takes the least recently used slot (40x64, used once) once requested > 2x as often
    for _ in range(SPECIALIZE_AFTER):
        x = rng.standard_normal((2, 3, 16, 24)).astype(np.float32)
        assert rel_error(torch.from_numpy(general.infer(x)), torch.from_numpy(runner.infer(x))) <= TOL_F32
    assert runner.specialized_sizes == [(32, 32), (16, 24)]
    # batch stays dynamic in a specialised session
    x = rng.standard_normal((5, 3, 16, 24)).astype(np.float32)
    assert runner.session_for(x) is not runner.session
    assert rel_error(torch.from_numpy(general.infer(x)), torch.from_numpy(runner.infer(x))) <= TOL_F32


def test_invalid_sizes_are_refused_before_any_session(tiny_files):
    runner = OrtRunner(tiny_files[0], specialize=4)
    with pytest.raises(InputShapeError, match="multiples of 8"):
        runner.infer(np.zeros((1, 3, 20, 32), np.float32))
    assert runner.specialized_sizes == []


def test_background_mode_builds_a_size_once_it_repeats(tiny_files):
    runner = OrtRunner(tiny_files[0], specialize=2, background=True)
    x = np.zeros((1, 3, 24, 24), np.float32)
    for _ in range(SPECIALIZE_AFTER - 1):
        runner.infer(x)
    assert runner.specialized_sizes == [] and not runner.per_size.building
    runner.infer(x)  # the repeat that starts the build; the general session answers it
    deadline = time.monotonic() + 60
    while runner.specialized_sizes != [(24, 24)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.specialized_sizes == [(24, 24)]
    assert runner.session_for(x) is not runner.session


def test_a_graph_with_a_fixed_size_is_not_specialised(tiny_files):
    runner = OrtRunner(tiny_files[1], specialize=4)
    assert runner.specialize == 0
    x = np.zeros((1, 3, 40, 64), np.float32)
    runner.infer(x)
    assert runner.session_for(x) is runner.session and runner.specialized_sizes == []


def test_open_runner_passes_it_on(tiny_files):
    runner = open_runner(tiny_files[0], specialize=3)
    assert isinstance(runner, OrtRunner) and runner.specialize == 3
    assert open_runner(tiny_files[0]).specialize == 0


def test_openvino_compiles_per_size_too(tiny_files):
    pytest.importorskip("openvino")
    from acmix_deploy.runtime.openvino import OpenVinoRunner

    dyn, _ = tiny_files
    general, runner = OrtRunner(dyn), OpenVinoRunner(dyn, specialize=1)
    assert runner.specialize == 1
    rng = np.random.default_rng(1)
    for h, w in [(32, 32)] + [(24, 40)] * SPECIALIZE_AFTER:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        assert rel_error(torch.from_numpy(general.infer(x)), torch.from_numpy(runner.infer(x))) <= TOL_F32, (h, w)
    assert runner.specialized_sizes == [(24, 40)]  # the busier size took the one slot
    assert OpenVinoRunner(tiny_files[1], specialize=2).specialize == 0


def test_warm_up_runs_on_the_general_session_and_takes_no_slot(tiny_files):
    runner = OrtRunner(tiny_files[0], specialize=2)
    runner.warm_up()
    assert runner.specialized_sizes == [] and runner.per_size is not None
    runner.infer(np.zeros((1, 3, 16, 16), np.float32))
    assert runner.specialized_sizes == [(16, 16)]
