"""Training-form operators and their deploy forms."""

from .acmix import ACmix, ACmixDeploy
from .swin_acmix import WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded
from ..kernels.window_attention_triton import attention_backend, set_attention_backend, triton_window_attention
from .window_attention import HaloPlan, conv_path_layout, halo_attention, make_halo_plan
from .xvolution import XVolution, XVolutionDeploy

__all__ = [
    "ACmix",
    "ACmixDeploy",
    "HaloPlan",
    "WindowAttentionACmix",
    "WindowAttentionACmixDeploy",
    "WindowAttentionACmixFolded",
    "XVolution",
    "XVolutionDeploy",
    "attention_backend",
    "conv_path_layout",
    "halo_attention",
    "make_halo_plan",
    "set_attention_backend",
    "triton_window_attention",
]
