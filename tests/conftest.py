"""Shared fixtures and the tolerances of the equivalence tests.

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

import pytest
import torch

from acmix_deploy.analysis import compare_outputs

TOL_F32 = 1e-5
TOL_F64 = 1e-12

def rel_error(ref, out) -> float:
    """``max|ref - out| / max|ref|`` in float64: acmix_deploy's own comparison (``compare_outputs``)."""
    return compare_outputs(ref, out).rel


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed (pip install triton; CUDA builds of torch ship it)")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """acmix_resnet_tiny (5 classes, random weights and BatchNorm statistics) exported to ONNX at 3x32x32:
    the model the serving tests run."""
    import acmix_deploy as ad
    from acmix_deploy.exporters.onnx import export_onnx
    from acmix_deploy.testing import randomize_model

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 3).eval()
    path = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    export_onnx(ad.reparameterize_model(model), path, (3, 32, 32))
    return path
