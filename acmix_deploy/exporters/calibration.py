"""Calibration data for INT8 post-training quantization.

Sources (``--calib``):

* ``digits``: scikit-learn's handwritten digits (shipped with the package), resized to the model's
  input, replicated over its channels and standardised; real images, right for the demo models.
* a ``.npy`` file: an array ``(N, C, H, W)`` (or ``(C, H, W)`` for one image) already preprocessed
  as the model expects; loaded with ``allow_pickle=False``.
* a directory of images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``; needs Pillow): resized to the
  input size, scaled to [0, 1] and normalised with the model's mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..util import require

__all__ = ["load_calibration", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _digits(input_size: tuple[int, int, int], limit: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    require("sklearn", "demo")
    from sklearn.datasets import load_digits

    c, h, w = input_size
    x = torch.tensor(load_digits().images[:limit], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    return x.expand(-1, c, -1, -1).contiguous().numpy()


def _images(folder: Path, input_size: tuple[int, int, int], mean, std, limit: int) -> np.ndarray:
    require("PIL", "demo")
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ConfigError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    c, h, w = input_size
    mode = "L" if c == 1 else "RGB"
    if c not in (1, 3):
        raise ConfigError(f"image folders can calibrate 1- or 3-channel models, this one takes {c} channels")
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
        except OSError as exc:
            raise ConfigError(f"cannot read calibration image {f}: {exc}") from None
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    m = np.asarray(mean if mean else [0.0] * c, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std if std else [1.0] * c, dtype=np.float32).reshape(1, -1, 1, 1)
    return (out - m[:, :c]) / s[:, :c]


def load_calibration(
    source: str | os.PathLike,
    input_size: tuple[int, int, int],
    mean=None,
    std=None,
    limit: int = 256,
) -> np.ndarray:
    """Calibration batch ``(N, C, H, W)`` float32 from a source described in the module docstring."""
    if limit < 1:
        raise ConfigError(f"calibration limit must be positive, got {limit}")
    if str(source) == "digits":
        return _digits(input_size, limit)
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"calibration source {path} does not exist (give 'digits', a .npy file or an image folder)")
    if path.is_dir():
        return _images(path, input_size, mean, std, limit)
    if path.suffix != ".npy":
        raise ConfigError(f"calibration file {path} is not a .npy array (or give 'digits' or an image folder)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot read calibration array {path}: {exc}") from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(input_size):
        raise ConfigError(
            f"calibration array {path} has shape {arr.shape}; expected (N, {', '.join(map(str, input_size))})"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"calibration array {path} has dtype {arr.dtype}; give preprocessed float data")
    return np.ascontiguousarray(arr[:limit], dtype=np.float32)
