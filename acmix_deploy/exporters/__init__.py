"""Exporters (ONNX, TensorRT, Triton repository): see the export issue; none is implemented yet."""
