"""Checks of the fused Triton kernel, run in Triton's interpreter in a process of their own.

Triton decides at import time whether its language functions run compiled
or interpreted (``TRITON_INTERPRET=1``); once another test (torch.compile,
AOTInductor) has imported it for compiling, the interpreter cannot be
switched on in that process.  ``tests/kernels/test_triton_attention.py`` therefore
runs this module as ``python -m tests.kernels.triton_interpreter_checks`` with
``TRITON_INTERPRET=1`` set from the start, and asserts on the JSON it prints:
for each check, the relative errors (or the error messages) it measured.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

import acmix_deploy as ad
from acmix_deploy.modules import ACmix, halo_attention, make_halo_plan
from acmix_deploy.kernels.window_attention_triton import set_attention_backend, triton_window_attention
from acmix_deploy.testing import randomize_model

from tests.helpers import rel_error
from tests.helpers.window_attention import CASES, attention_inputs, head_dim_major, unfold_reference


def unfold_cases() -> list[dict]:
    """The kernel against the unfold form and the blocked core, on every case of the core's own tests."""
    out = []
    for heads, d, ka, stride, size, batch, _tile in CASES:
        q, k, v, conv_p = attention_inputs(heads, d, size, batch, torch.float32, heads * 100 + ka + stride)
        with torch.no_grad():
            ref = unfold_reference(q.double(), k.double(), v.double(), copy.deepcopy(conv_p).double(), heads, ka, stride)
            plan = make_halo_plan(*size, ka, stride, heads, d)
            qkv = head_dim_major(q, k, v, heads)
            got = triton_window_attention(qkv, conv_p.weight.reshape(d, 2), heads, ka, stride)
            blocked = halo_attention(qkv, conv_p.weight.reshape(d, 2), plan)
        out.append({"case": [heads, d, ka, stride, list(size), batch], "shape_ok": got.shape == ref.shape,
                    "dtype": str(got.dtype), "vs_unfold": rel_error(ref, got), "vs_blocked": rel_error(blocked, got)})
    return out


def half_inputs() -> dict:
    """float16 / bfloat16 inputs: widened on load, the output rounded once."""
    heads, d, ka = 2, 8, 7
    q, k, v, conv_p = attention_inputs(heads, d, (9, 10), 2, torch.float32, 7)
    plan = make_halo_plan(9, 10, ka, 1, heads, d)
    res = {}
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        qkv = head_dim_major(q, k, v, heads).to(dtype)
        with torch.no_grad():
            ref = halo_attention(qkv.float(), conv_p.weight.reshape(d, 2), plan)
            got = triton_window_attention(qkv, conv_p.weight.reshape(d, 2), heads, ka, 1)
        res[name] = {"dtype": str(got.dtype), "err": rel_error(ref, got.float())}
    return res


class CountCalls:
    """Wraps ``acmix.triton_window_attention`` to count the calls ACmixDeploy.forward makes to the kernel."""

    def __init__(self):
        import acmix_deploy.modules.acmix as acmix_module

        self.module, self.original, self.calls = acmix_module, acmix_module.triton_window_attention, 0

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.module.triton_window_attention = counted
        return self

    def __exit__(self, *exc):
        self.module.triton_window_attention = self.original


def deploy_blocks() -> list[dict]:
    """A deploy block on the Triton backend against its training form (random weights and BN statistics)."""
    res = []
    for stride, batch, shape in ((1, 1, (11, 9)), (2, 3, (10, 14))):
        m = randomize_model(ACmix(16, 16, kernel_att=7, head=4, kernel_conv=3, stride=stride), 3).eval()
        dep = m.fuse().eval()
        x = torch.randn(batch, 16, *shape)
        set_attention_backend("triton")
        try:
            with CountCalls() as count, torch.no_grad():
                err = rel_error(m(x), dep(x))
            # Autograd-recorded and float64 forwards stay on the blocked core (no backward; float32 kernel).
            with CountCalls() as count_fallback:
                xg = x.clone().requires_grad_(True)
                grad_err = rel_error(torch.autograd.grad(m(xg).sum(), xg)[0], torch.autograd.grad(dep(xg).sum(), xg)[0])
                m64 = copy.deepcopy(m).double()
                with torch.no_grad():
                    err64 = rel_error(m64(x.double()), m64.fuse().eval()(x.double()))
        finally:
            set_attention_backend(None)
        res.append({"stride": stride, "batch": batch, "kernel_calls": count.calls, "err": err,
                    "fallback_kernel_calls": count_fallback.calls, "grad_err": grad_err, "err64": err64})
    return res


def new_pos_weight() -> dict:
    """The kernel follows pos_weight however it is replaced (in place, assigned, through .data)."""
    m = randomize_model(ACmix(8, 8, kernel_att=5, head=2, kernel_conv=3, stride=1), 5).eval()
    dep = m.fuse().eval()
    x = torch.randn(2, 8, 9, 7)

    def kernel_vs_blocked() -> float:
        set_attention_backend("triton")
        try:
            with torch.no_grad():
                fused = dep(x)
        finally:
            set_attention_backend("halo")
        with torch.no_grad():
            blocked = dep(x)
        set_attention_backend(None)
        return rel_error(blocked, fused)

    errs = {"initial": kernel_vs_blocked()}
    state = dep.state_dict()
    state["pos_weight"] = torch.randn_like(state["pos_weight"]) * 3
    dep.load_state_dict(state)
    errs["load_state_dict"] = kernel_vs_blocked()
    state["pos_weight"] = torch.randn_like(state["pos_weight"]) * 3
    dep.load_state_dict(state, assign=True)
    errs["assign"] = kernel_vs_blocked()
    dep.pos_weight.data.copy_(torch.randn_like(dep.pos_weight) * 3)
    errs["data_copy"] = kernel_vs_blocked()
    return errs


def export_unchanged() -> dict:
    """With the Triton backend chosen, the ONNX export still records the blocked core, byte for byte."""
    from acmix_deploy.exporters import export_onnx

    m = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny"), 0).eval())
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(m, Path(tmp) / "halo.onnx", (3, 32, 32))
        set_attention_backend("triton")
        try:
            with CountCalls() as eager, torch.no_grad():
                m(torch.randn(1, 3, 32, 32))
            with CountCalls() as exporting:
                export_onnx(m, Path(tmp) / "chosen.onnx", (3, 32, 32))
        finally:
            set_attention_backend(None)
        same = (Path(tmp) / "halo.onnx").read_bytes() == (Path(tmp) / "chosen.onnx").read_bytes()
    return {"eager_kernel_calls": eager.calls, "export_kernel_calls": exporting.calls, "identical": same}


def bad_shapes() -> list[str]:
    msgs = []
    for args in ((torch.zeros(1, 6, 4, 4, dtype=torch.float64), torch.zeros(2, 2), 1, 3, 1),
                 (torch.zeros(1, 7, 4, 4), torch.zeros(2, 2), 1, 3, 1),
                 (torch.zeros(1, 6, 4, 4), torch.zeros(3, 2), 1, 3, 1),
                 (torch.zeros(1, 6, 3, 3), torch.zeros(2, 2), 1, 7, 1)):
        try:
            triton_window_attention(*args)
            msgs.append("no error")
        except ValueError as exc:
            msgs.append(str(exc))
    return msgs


CHECKS = {f.__name__: f for f in (unfold_cases, half_inputs, deploy_blocks, new_pos_weight, export_unchanged,
                                   bad_shapes)}

if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1")
    torch.set_num_threads(2)
    print(json.dumps({name: f() for name, f in CHECKS.items()}))
