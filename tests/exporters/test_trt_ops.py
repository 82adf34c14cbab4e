"""TensorRT 10's operator matrix: enforced for TensorRT targets, a warning elsewhere."""

import pytest
import torch
from torch import nn

from acmix_deploy.errors import ExportError
from acmix_deploy.exporters.trt_ops import TENSORRT_ONNX_OPS

pytest.importorskip("onnx")


def test_matrix_is_tensorrt_10s():
    assert {"HardSwish", "Gelu", "LayerNormalization", "Mod", "NonZero", "Trilu"} <= TENSORRT_ONNX_OPS
    assert not {"QLinearConv", "SequenceAt", "Unique", "ConvInteger"} & TENSORRT_ONNX_OPS


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Hardswish(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()


def test_hardswish_exports_for_onnx_runtime_and_tensorrt(tmp_path, recwarn):
    from acmix_deploy.exporters import export_onnx

    res = export_onnx(_net(), tmp_path / "a.onnx", (3, 8, 8), for_tensorrt=True, simplify=False)
    assert "HardSwish" in res.op_histogram and not [w for w in recwarn if "TensorRT" in str(w.message)]


class _Det(nn.Module):  # Det: "N" in TensorRT 10's matrix
    def forward(self, x):
        return torch.linalg.det(x[:, 0, :4, :4]) + self.w.sum()

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


def test_unsupported_operator_warns_or_refuses(tmp_path):
    from acmix_deploy.exporters import export_onnx

    with pytest.warns(UserWarning, match="Det"):
        export_onnx(_Det(), tmp_path / "d.onnx", (1, 4, 4), simplify=False, dynamic=False)
    with pytest.raises(ExportError, match="Det"):
        export_onnx(_Det(), tmp_path / "e.onnx", (1, 4, 4), simplify=False, dynamic=False, for_tensorrt=True)
    assert not (tmp_path / "e.onnx").exists()
