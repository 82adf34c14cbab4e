"""Training-form operators and their deploy forms."""

from .acmix import ACmix, ACmixDeploy
from .window_attention import HaloPlan, halo_attention, make_halo_plan

__all__ = ["ACmix", "ACmixDeploy", "HaloPlan", "halo_attention", "make_halo_plan"]
