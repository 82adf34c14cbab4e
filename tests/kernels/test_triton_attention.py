"""The fused Triton kernel of the window attention, run in Triton's interpreter on the CPU.

``TRITON_INTERPRET=1`` makes Triton execute the kernel program by program
with NumPy: the same indexing, masks, reflection and float32 arithmetic as on
a GPU (a GPU's ``exp`` is an approximation a few ulps off NumPy's, which only
``tests/kernels/test_cuda.py`` can see), so exactness is checked here without a GPU;
speed is not (``benchmarks/attention_speed.py --device cuda``).  The interpreter must
be on before Triton is first imported, so the kernel checks run in a process
of their own (``tests/kernels/triton_interpreter_checks.py``) and these tests assert
on what it measured.

Tolerance: float32 ``1e-5`` (``tests.helpers.TOL_F32``): the kernel sums the same
float32 terms as the unfold form in another order (observed 3e-7 to 7e-7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acmix_deploy.errors import ConfigError, MissingDependencyError
from acmix_deploy.kernels import window_attention_triton as triton_attention
from acmix_deploy.kernels.window_attention_triton import set_attention_backend, triton_window_attention, use_triton

from tests.helpers import TOL_F32, TOL_F64, needs_triton
from tests.helpers.window_attention import CASES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def measured():
    """Run every interpreter check once, in a fresh process with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop(triton_attention.ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.triton_interpreter_checks"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c[:6]) for c in CASES])
def test_kernel_equals_unfold_form_and_blocked_core(measured, index):
    case = measured["unfold_cases"][index]
    assert case["shape_ok"] and case["dtype"] == "torch.float32"
    assert case["vs_unfold"] <= TOL_F32, case
    assert case["vs_blocked"] <= TOL_F32, case


@needs_triton
def test_kernel_widens_half_inputs_and_rounds_the_output_once(measured):
    # The kernel computes in float32 from the half-precision inputs; what is left is the output's one
    # rounding (float16: 2^-11 ~ 4.9e-4 relative; bfloat16: 2^-8 ~ 3.9e-3), times a small margin.
    res = measured["half_inputs"]
    assert res["float16"]["dtype"] == "torch.float16" and res["float16"]["err"] <= 2e-3
    assert res["bfloat16"]["dtype"] == "torch.bfloat16" and res["bfloat16"]["err"] <= 1.6e-2


@needs_triton
def test_deploy_block_on_the_triton_backend_equals_training_form(measured):
    rows = measured["deploy_blocks"]
    assert {(r["stride"], r["batch"]) for r in rows} == {(1, 1), (2, 3)}
    for r in rows:
        assert r["kernel_calls"] == 1, r  # the deploy block's attention went through the kernel
        assert r["err"] <= TOL_F32, r


@needs_triton
def test_autograd_and_float64_forwards_keep_the_blocked_core(measured):
    # The kernel has no backward and computes in float32: a forward that autograd records, or a float64
    # one, takes the blocked core, so gradients are right and float64 keeps float64 accuracy.
    for r in measured["deploy_blocks"]:
        assert r["fallback_kernel_calls"] == 0, r
        assert r["grad_err"] <= TOL_F32, r
        assert r["err64"] <= TOL_F64, r


@needs_triton
def test_kernel_follows_a_new_pos_weight(measured):
    # The key offsets are computed in the kernel from pos_weight on every call: nothing to go stale
    # when the weight is loaded in place, assigned, or written through .data.
    errs = measured["new_pos_weight"]
    assert set(errs) == {"initial", "load_state_dict", "assign", "data_copy"}
    assert all(e <= TOL_F32 for e in errs.values()), errs


@needs_triton
def test_export_records_the_standard_operator_core(measured):
    res = measured["export_unchanged"]
    assert res["eager_kernel_calls"] > 0  # eager calls take the kernel...
    assert res["identical"]  # ...the export traces the blocked core: the same file, byte for byte
    # (the exporter's validation forward, which compares ONNX Runtime with the eager model, may use it)


@needs_triton
def test_kernel_rejects_inconsistent_shapes(measured):
    msgs = measured["bad_shapes"]
    assert "computes in float32 from" in msgs[0] and "torch.float64" in msgs[0]
    assert "multiple of 3 * heads" in msgs[1]
    assert "does not match head_dim" in msgs[2]
    assert "reflection padding 3" in msgs[3]


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(triton_attention.ENV_VAR, raising=False)
    set_attention_backend(None)
    assert triton_attention.attention_backend() == "halo"
    assert not use_triton(torch.zeros(1))  # the default never takes the kernel
    monkeypatch.setenv(triton_attention.ENV_VAR, "fused")
    with pytest.raises(ConfigError, match="ACMIX_DEPLOY_ATTENTION='fused'"):
        triton_attention.attention_backend()
    monkeypatch.setenv(triton_attention.ENV_VAR, "halo")
    with pytest.raises(ConfigError, match="unknown attention backend"):
        set_attention_backend("cudnn")


def test_triton_backend_without_triton_or_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(triton_attention.ENV_VAR, raising=False)
    monkeypatch.setattr(triton_attention, "_have_triton", lambda: False)
    with pytest.raises(MissingDependencyError, match="Triton is not installed"):
        set_attention_backend("triton")
    with pytest.raises(MissingDependencyError, match="Triton is not installed"):
        triton_window_attention(torch.zeros(1, 6, 4, 4), torch.zeros(2, 2), 1, 3, 1)
    monkeypatch.setattr(triton_attention, "_have_triton", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="needs a CUDA GPU"):
        set_attention_backend("triton")
    assert triton_attention.attention_backend() == "halo"  # a refused choice changes nothing
    # Chosen through the environment without Triton: the blocked core runs, with one warning.
    monkeypatch.setenv(triton_attention.ENV_VAR, "triton")
    monkeypatch.setattr(triton_attention, "_have_triton", lambda: False)
    monkeypatch.setattr(triton_attention, "_warned", set())
    with pytest.warns(RuntimeWarning, match="Triton is not installed"):
        assert not use_triton(torch.zeros(1))
