"""What the files acmix-deploy writes look like, with one reader (and one writer) for each.

* :mod:`.onnx`: the ONNX graph's tensor names and its ``acmix_deploy.*`` metadata; a summary of any ONNX file;
* :mod:`.tensorrt`: a TensorRT engine's JSON sidecar and the environment (GPU, TensorRT) it names;
* :mod:`.aoti`: an AOTInductor package's metadata.

Exporters write through this layer and runtimes read through it; neither imports the other.
"""

from __future__ import annotations

from .aoti import AotiMetadata, aoti_metadata, read_aoti_metadata
from .onnx import (INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, SINGLE_OUTPUT_NAME, OnnxSummary, decode_metadata,
                   describe_onnx, read_onnx_metadata)
from .tensorrt import EngineSidecar, GpuInfo, check_sidecar, read_sidecar, sidecar_path, write_sidecar

__all__ = ["AotiMetadata", "EngineSidecar", "GpuInfo", "INPUT_NAME", "METADATA_PREFIX", "OUTPUT_NAME", "OnnxSummary",
           "SINGLE_OUTPUT_NAME", "aoti_metadata", "check_sidecar", "decode_metadata", "describe_onnx",
           "read_aoti_metadata", "read_onnx_metadata", "read_sidecar", "sidecar_path", "write_sidecar"]
