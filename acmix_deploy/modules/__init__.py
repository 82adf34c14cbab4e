"""Training-form operators and their deploy forms."""

from .acmix import ACmix, ACmixDeploy, window_attention

__all__ = ["ACmix", "ACmixDeploy", "window_attention"]
