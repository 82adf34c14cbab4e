"""ACmix's window attention as one fused Triton kernel, for CUDA tensors in the torch runner.

The kernel computes exactly what :func:`~acmix_deploy.modules.window_attention.halo_attention`
computes, from the same inputs (the fused 1x1 convolution's output in
head-dimension-major order, queries pre-scaled, and ``conv_p``'s weight),
without any intermediate tensor: each program takes ``BLOCK_P`` output
pixels of one image and head, loads their queries once, and walks the
``ka x ka`` window with an online ("running") softmax, keeping the running
maximum, the running sum and the weighted sum of values in registers::

    for each offset (dy, dx) of the window:
        n      = reflect(s * p - pad + (dy, dx))          # ReflectionPad2d, built into the index
        logit  = q(p) . (k(n) - W_p loc(n))              # conv_p(loc) without bias (see below)
        m'     = max(m, logit);  a = exp(m - m');  e = exp(logit - m')
        sum    = sum * a + e;    acc = acc * a + e * v(n);  m = m'
    out(p) = acc / sum

The positional term is the same key offset as in the blocked core
(``q(p) . conv_p(loc(p))`` is constant over the window and softmax ignores it), and
every slot of the window is visited, so a key that the reflection brings in
twice counts twice, as in the unfold form.  All arithmetic is float32 (the
inputs may be float16 or bfloat16; they are widened on load), so the kernel
differs from the unfold form only by the order of summation and, on a GPU,
by the hardware ``exp`` approximation (a few ulps).

Status: the kernel is checked against the blocked core and the unfold form
in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, tests in
``tests/kernels/test_triton_attention.py``).  Its speed on a GPU has not been
measured yet (no GPU was lent to the sessions that wrote it), so it is not
the default: :func:`set_attention_backend` or the environment variable
``ACMIX_DEPLOY_ATTENTION=triton`` selects it; ``benchmarks/attention_speed.py
--device cuda`` compares the two.  It runs in eager mode only: ONNX export and
tracing record the blocked core (standard operators only), and torch.compile /
AOTInductor compile the blocked core with Inductor, which makes its own kernels.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from ..errors import ConfigError, InputShapeError, MissingDependencyError

__all__ = ["ATTENTION_BACKENDS", "attention_backend", "set_attention_backend", "triton_available",
           "triton_window_attention", "use_triton"]

ATTENTION_BACKENDS = ("halo", "triton")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ENV_VAR = "ACMIX_DEPLOY_ATTENTION"
_backend: str | None = None  # None: read ENV_VAR (default "halo")


def triton_available() -> tuple[bool, str]:
    """Whether the kernel can run here, and if not, why (one line)."""
    if not _have_triton():
        return False, "Triton is not installed (it comes with CUDA builds of PyTorch; `pip install triton`)"
    if not _interpreting() and not torch.cuda.is_available():
        return False, "the Triton kernel needs a CUDA GPU (torch sees none) or TRITON_INTERPRET=1"
    return True, ""


def attention_backend() -> str:
    """The attention implementation ACmix deploy blocks use for CUDA tensors: ``halo`` or ``triton``."""
    name = _backend if _backend is not None else os.environ.get(ENV_VAR, "halo").strip().lower() or "halo"
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"{ENV_VAR}={name!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    return name


def set_attention_backend(name: str | None) -> None:
    """Choose the attention implementation (``None``: back to the environment variable / default)."""
    global _backend
    if name is not None:
        if name not in ATTENTION_BACKENDS:
            raise ConfigError(f"unknown attention backend {name!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
        if name == "triton":
            ok, why = triton_available()
            if not ok:
                raise MissingDependencyError(f"attention backend 'triton' is not available: {why}")
    _backend = name


def use_triton(x: torch.Tensor) -> bool:
    """True when the Triton kernel should compute the attention of ``x``.

    Eager inference only: ONNX export and tracing record the blocked core
    (standard operators), torch.compile / torch.export / AOTInductor compile
    the blocked core with Inductor, which generates its own kernels, and a
    forward pass that autograd records (``x.requires_grad``) takes the
    blocked core too (the kernel has no backward).  float64 stays on the
    blocked core (the kernel computes in float32), and so does a map with
    2**31 or more elements per image (the kernel's offsets are 32-bit).
    """
    if attention_backend() != "triton":
        return False
    if not _have_triton():
        _warn_once("the 'triton' attention backend is chosen but Triton is not installed: "
                   "ACmix deploy blocks use the blocked core")
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    if x.dtype not in KERNEL_DTYPES or (x.requires_grad and torch.is_grad_enabled()):
        return False
    if x.dim() == 4 and x[0].numel() >= 2**31:  # beyond the kernel's 32-bit plane offsets
        return False
    return x.is_cuda or (_interpreting() and x.device.type == "cpu")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _have_triton() -> bool:
    # Triton ships with CUDA builds of torch; a CPU-only install has it only if installed by hand.
    # Looked up without importing it (the import costs ~0.15 s and is only needed to run the kernel),
    # once per process: every deploy block asks on every forward pass.
    return importlib.util.find_spec("triton") is not None


_compiled: dict[bool, object] = {}


def _kernel():
    """The jitted kernel (built on first use, so that TRITON_INTERPRET set by then is honoured)."""
    key = _interpreting()
    if key not in _compiled:
        import triton

        from ._window_attention_kernel import window_attention_kernel  # imports triton: an optional dependency

        _compiled[key] = triton.jit(window_attention_kernel)
    return _compiled[key]


def triton_window_attention(
    qkv: torch.Tensor, pos_weight: torch.Tensor, heads: int, kernel: int, stride: int,
) -> torch.Tensor:
    """Window attention of ACmix in one kernel; same contract as ``halo_attention``.

    ``qkv``: ``(b, 3C, H, W)`` in head-dimension-major order, queries scaled;
    ``pos_weight``: ``(d, 2)``, ``conv_p``'s weight (the kernel computes the
    key offsets ``W_p loc`` from it and the coordinates
    ``loc = linspace(-1, 1, W) x linspace(-1, 1, H)``).  Returns
    ``(b, C, H_out, W_out)``, head-major channels, in the dtype of ``qkv``.
    """
    ok, why = triton_available()
    if not ok:
        raise MissingDependencyError(f"triton_window_attention: {why}")
    b, c3, hh, ww = qkv.shape
    if c3 % (3 * heads):
        raise InputShapeError(f"qkv has {c3} channels, not a multiple of 3 * heads ({3 * heads})")
    d = c3 // (3 * heads)
    if pos_weight.shape != (d, 2):
        raise InputShapeError(f"pos_weight {tuple(pos_weight.shape)} does not match head_dim {d}: expected ({d}, 2)")
    if qkv.device != pos_weight.device:
        raise InputShapeError(f"qkv ({qkv.device}) and pos_weight ({pos_weight.device}) must be on one device")
    if qkv.device.type != "cuda" and not _interpreting():
        raise InputShapeError(f"the Triton kernel runs on CUDA tensors, got a tensor on {qkv.device}")
    if qkv.dtype not in KERNEL_DTYPES:
        raise InputShapeError(f"the Triton kernel computes in float32 from {', '.join(map(str, KERNEL_DTYPES))} "
                              f"inputs, got {qkv.dtype}")
    pad = (kernel - 1) // 2
    if pad >= hh or pad >= ww:
        raise InputShapeError(f"reflection padding {pad} needs a map larger than {pad}x{pad}, got {hh}x{ww}")
    if c3 * hh * ww >= 2**31:  # channel-plane offsets within one image are 32-bit in the kernel
        raise InputShapeError(f"one image's qkv map has {c3 * hh * ww} elements; the kernel indexes up to 2**31")
    out_h, out_w = (hh - 1) // stride + 1, (ww - 1) // stride + 1
    pos_weight = pos_weight.float().contiguous()
    qkv = qkv.contiguous()
    out = torch.empty(b, heads * d, out_h, out_w, dtype=qkv.dtype, device=qkv.device)
    block_d = 1 << max(0, d - 1).bit_length()  # next power of two
    block_p = max(16, min(128, 4096 // block_d))  # ~4k float32 accumulators per program
    pixel_blocks = -(-(out_h * out_w) // block_p)
    grid = (b * heads * pixel_blocks,)
    # q, the accumulator and the loaded k, pe, v tiles are each block_p * block_d floats per program:
    # 8 warps for the 4096-element tiles keep them in registers (~32 floats per thread each).
    launch = _kernel()[grid]
    step_x = 2.0 / (ww - 1) if ww > 1 else 0.0  # linspace(-1, 1, n): -1 + i * 2 / (n - 1)
    step_y = 2.0 / (hh - 1) if hh > 1 else 0.0
    args = (qkv, pos_weight, out, hh, ww, out_h, out_w, heads, d, pixel_blocks, step_x, step_y)
    meta = dict(KA=kernel, STRIDE=stride, BLOCK_P=block_p, BLOCK_D=block_d,
                num_warps=8 if block_p * block_d >= 4096 else 4)
    if qkv.is_cuda:
        with torch.cuda.device(qkv.device):  # Triton launches on the current device
            launch(*args, **meta)
    else:  # the interpreter (tests)
        launch(*args, **meta)
    return out
