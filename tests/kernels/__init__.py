"""acmix_deploy/kernels/: the fused Triton window-attention kernel (CPU interpreter, and CUDA where present)."""
