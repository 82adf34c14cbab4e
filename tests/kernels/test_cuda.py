"""Exactness on a CUDA GPU: the deploy form (blocked core and the compiled Triton kernel) against training.

Skipped where torch sees no CUDA GPU (every machine this project is developed on so far; the kernel's
CPU-interpreter checks are in test_triton_attention.py).  TF32 is switched off for these tests:
with it, cuDNN convolutions and cuBLAS products round their inputs to 10 mantissa bits, which moves
any float32 network by ~1e-3 whether or not it was folded; the 1e-5 tolerance (tests/helpers) is for
float32 arithmetic.
"""

from __future__ import annotations


import pytest
import torch

import acmix_deploy as ad
import acmix_deploy.modules.acmix as acmix_module
from acmix_deploy.modules import (ACmix, ACmixDeploy, halo_attention, make_halo_plan, set_attention_backend,
                                  triton_window_attention)
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, needs_triton, rel_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    set_attention_backend(None)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls ACmixDeploy.forward makes to the Triton kernel."""
    calls = []
    original = acmix_module.triton_window_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(acmix_module, "triton_window_attention", counted)
    return calls


@pytest.mark.parametrize("arch,size", [("acmix_resnet_tiny", 32), pytest.param("acmix_resnet50", 224, marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", ["halo", pytest.param("triton", marks=needs_triton)])
def test_deploy_form_on_cuda_equals_training_form(arch, size, backend, kernel_calls):
    train = randomize_model(ad.create_model(arch), 0).eval().cuda()
    deploy = ad.reparameterize_model(train)
    x = torch.randn(3, 3, size, size, device="cuda")
    set_attention_backend(backend)
    with torch.inference_mode():
        err = rel_error(train(x), deploy(x))
    assert err <= TOL_F32
    n_blocks = sum(isinstance(m, ACmixDeploy) for m in deploy.modules())
    assert len(kernel_calls) == (n_blocks if backend == "triton" else 0)


@needs_triton
@pytest.mark.parametrize("heads,d,ka,stride,hw,batch", [
    (4, 16, 7, 1, (56, 56), 2), (4, 32, 7, 2, (28, 28), 1), (4, 128, 7, 1, (7, 7), 3), (3, 5, 5, 1, (9, 11), 2),
])
def test_compiled_kernel_equals_blocked_core(heads, d, ka, stride, hw, batch):
    qkv = torch.randn(batch, 3 * heads * d, *hw, device="cuda")
    pw = torch.randn(d, 2, device="cuda")
    plan = make_halo_plan(*hw, ka, stride, heads, d, device="cuda")
    with torch.inference_mode():
        ref = halo_attention(qkv, pw, plan)
        out = triton_window_attention(qkv, pw, heads, ka, stride)
        ref_half = halo_attention(qkv.half().float(), pw, plan)  # the same rounded inputs, float32 arithmetic
        half = triton_window_attention(qkv.half(), pw, heads, ka, stride)
    assert rel_error(ref, out) <= TOL_F32
    assert half.dtype == torch.float16 and rel_error(ref_half, half.float()) <= 2e-3  # one rounding of the output


@needs_triton
def test_triton_block_backend_takes_the_kernel_on_cuda(kernel_calls):
    m = randomize_model(ACmix(64, 64, 7, 4, 3, 1), 1).eval().cuda()
    dep = m.fuse().eval()
    x = torch.randn(2, 64, 14, 14, device="cuda")
    set_attention_backend("triton")
    with torch.inference_mode():
        assert rel_error(m(x), dep(x)) <= TOL_F32
    assert len(kernel_calls) == 1
