"""Stand-ins for TensorRT: a recording ``tensorrt`` module and engine files with their sidecars."""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path


def fake_tensorrt(version: str, parse_ok: bool = True, build_ok: bool = True) -> types.ModuleType:
    """A stand-in for the ``tensorrt`` module that records what the builder code asks of it."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.calls = []

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 5

    flags = ["TF32", "OBEY_PRECISION_CONSTRAINTS"] + (["FP16", "INT8"] if major < 11 else [])
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    trt.LayerType = enum.Enum("LayerType", ["CONVOLUTION", "SOFTMAX", "REDUCE", "MATRIX_MULTIPLY", "NORMALIZATION"])
    trt.float32 = "float32"

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            pass

    class Layer:
        def __init__(self, kind):
            self.type, self.precision, self.num_outputs, self.out_types = kind, None, 1, {}

        def set_output_type(self, i, t):
            self.out_types[i] = t

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.layers = [Layer(trt.LayerType.CONVOLUTION), Layer(trt.LayerType.MATRIX_MULTIPLY),
                           Layer(trt.LayerType.SOFTMAX), Layer(trt.LayerType.REDUCE),
                           Layer(trt.LayerType.NORMALIZATION)]
            self.num_layers = len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            trt.calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i):
            return "Unsupported operator FancyOp"

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles, self.pool, self.cache = set(), set(), [], {}, None
            self.builder_optimization_level = None

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shape = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            trt.builder = self

        def create_network(self, flags):
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN-BYTES" if build_ok else None

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    return trt


def fake_engine(folder: Path, stem: str, cc: str, profiles=None, output_shape=(-1, 6), **extra) -> Path:
    """``folder/stem.engine`` (fake plan bytes: the repository writer only copies them) and its sidecar, as
    built for compute capability ``cc``; ``extra`` adds or replaces sidecar fields."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / f"{stem}.engine"
    engine.write_bytes(f"plan for sm{cc}".encode())
    meta = {"format": "acmix-deploy.tensorrt-engine", "format_version": 1, "tensorrt_version": "10.7.0",
            "gpu_name": f"GPU {cc}", "compute_capability": cc, "precision": "fp16", "typing": "strong",
            "input_name": "images", "output_name": "logits", "input_size": [3, 32, 32], "onnx_sha256": "0" * 64,
            "build_seconds": 12.5,
            "profiles": profiles or [{"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}],
            **extra}
    if output_shape is not None:
        meta["output_shape"] = list(output_shape)
    (folder / f"{stem}.engine.json").write_text(json.dumps(meta))
    return engine
