"""Triton's ``model_config.proto`` as generated Python, loaded from tritonclient's file (skips without it).

Importing ``tritonclient.grpc`` would pull grpcio, which the HTTP client does not need, so the generated
module is loaded from its file; it needs only ``protobuf``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

tritonclient = pytest.importorskip("tritonclient", reason="tritonclient ships Triton's model_config.proto")


def load_model_config_pb2():
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip(f"{path} not found in this tritonclient")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(pb2, text: str):
    """``config.pbtxt`` text read with Triton's own schema."""
    text_format = pytest.importorskip("google.protobuf.text_format", reason="protobuf is needed to parse config.pbtxt")
    return text_format.Parse(text, pb2.ModelConfig())  # raises ParseError on anything Triton would not read
