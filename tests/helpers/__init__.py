"""Helpers shared by the tests (not fixtures: those are in tests/conftest.py).

Tolerances (relative error ``max|a - b| / max|a|``, see acmix_deploy.analysis):

* float64: ``1e-12``.  The folds are exact algebra, so in float64 only
  rounding of reassociated sums remains (observed ~1e-15 for whole ResNet-50s);
  any real mistake (a wrong channel, a missed border, a dropped bias) gives
  errors of order 1e-3 to 1.
* float32: ``1e-5`` (~100 float32 ulps).  Folding changes the order of the
  sums (q/k/v fused, fc merged into dep_conv, BatchNorm scales multiplied into
  weights), so each layer's output moves by a few ulps and the differences
  compound over depth and through softmax; observed values are 1e-7 for one
  block and ~4e-7 for ResNet-50, so 1e-5 leaves a margin while still being
  far below the ~1e-3 that the smallest real mistake produces.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from acmix_deploy.analysis import compare_outputs
from acmix_deploy.foreign import acmix_structure, swin_attention_structure
from acmix_deploy.testing import randomize_model

from tests import user_nets

TOL_F32 = 1e-5
TOL_F64 = 1e-12

NETS = str(Path(user_nets.__file__))
"""tests/user_nets.py: users' own networks, as a file that ``--model-def`` and copies in temp dirs load."""


def rel_error(ref, out) -> float:
    """``max|ref - out| / max|ref|`` in float64: acmix_deploy's own comparison (``compare_outputs``)."""
    return compare_outputs(ref, out).rel


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed (pip install triton; CUDA builds of torch ship it)")


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BatchNorm / LayerNorm statistics, copies' rates and position tables (not the init values)."""
    randomize_model(net, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if acmix_structure(m)[0] is not None or swin_attention_structure(m)[0] is not None:
                m.rate1.copy_(0.2 + 0.8 * torch.rand(1, generator=gen))
                m.rate2.copy_(-1 + 2 * torch.rand(1, generator=gen))
            if swin_attention_structure(m)[0] is not None:
                m.relative_position_bias_table.copy_(0.5 * torch.randn(m.relative_position_bias_table.shape,
                                                                       generator=gen))
    return net.eval()


def ort_optimized_nodes(path, out: Path | str | None = None, overrides: dict[str, int] | None = None) -> list:
    """The nodes of ``path`` (an ONNX file) as ONNX Runtime's CPU session optimizes them (written to ``out``,
    default ``<path>.opt.onnx``), with free dimension ``overrides`` (axis name -> size) if given."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    for name, value in (overrides or {}).items():
        so.add_free_dimension_override_by_name(name, value)
    so.optimized_model_filepath = str(out or f"{path}.opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return list(onnx.load(so.optimized_model_filepath).graph.node)
