"""Hand-written GPU kernels (Triton language).

``window_attention_triton`` holds the dispatch (backend choice, availability,
input checks) and imports ``_window_attention_kernel`` -- the ``@triton.jit``
source -- only when the fused kernel is actually used, so importing this
package never needs the ``triton`` package.  Not to be confused with the
Triton Inference Server repositories of :mod:`acmix_deploy.exporters.triton_repository`.
"""
from .window_attention_triton import attention_backend, set_attention_backend, triton_window_attention

__all__ = ["attention_backend", "set_attention_backend", "triton_window_attention"]
