"""acmix_deploy/exporters/ and artifacts/: ONNX, dynamic sizes, AOTInductor, TensorRT, Triton repositories."""
