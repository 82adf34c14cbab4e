"""Checkpoint reading and writing.

Our format is a plain dict, loadable with ``torch.load(weights_only=True)``::

    {"format_version": 1, "arch": str, "arch_args": dict, "deploy": bool,
     "state_dict": {name: tensor}, "meta": dict}

:func:`read_checkpoint` also accepts what training scripts usually write: a
bare state dict (the official ACmix code), or one wrapped under ``"model"``
(Swin/DeiT-style scripts), ``"state_dict"`` (Lightning, mmcv) or
``"model_state_dict"``; a leading ``module.`` (DataParallel/DDP) is
stripped.  Files are never unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._version import __version__
from .errors import CheckpointError
from .models import create_model, infer_model_args, is_deploy_state_dict, list_models, model_entrypoint
from .modules.acmix import check_deploy_layout
from .reparam import is_deploy
from .user_model import read_user_checkpoint
from .util import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "LoadedCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]

FORMAT_VERSION = 1
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state")
_SHOWN = 5  # how many key names an error message lists


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` in our checkpoint format, atomically.

    The model must come from :func:`acmix_deploy.create_model` (it carries
    ``arch_name`` and ``arch_args``).  Whether it is in deploy form is
    detected from its modules.
    """
    arch = getattr(model, "arch_name", None)
    if arch is None:
        raise CheckpointError(
            "the model has no arch_name: build it with acmix_deploy.create_model(name, ...) "
            "so that the checkpoint records how to rebuild it"
        )
    full_meta = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "torch_version": str(torch.__version__),
    }
    full_meta.update(meta or {})
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_args": dict(getattr(model, "arch_args", {})),
        "deploy": is_deploy(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": full_meta,
    }
    size = (getattr(model, "default_cfg", None) or {}).get("input_size")
    if size is not None:  # the (C, H, W) the model is used at (the demo: the size it trained at), read back below
        payload["input_size"] = [int(v) for v in size]
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


@dataclass
class LoadedCheckpoint:
    """A model read from a file, with what was learnt about the file."""

    model: nn.Module
    arch: str
    arch_args: dict[str, Any]
    deploy: bool
    source_format: str  # "acmix-deploy", "state_dict", or "wrapped:<key>"
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_def: dict[str, Any] | None = None  # users' own models: the recorded definition (see user_model)
    input_size: tuple[int, int, int] | None = None  # users' own models: the recorded (C, H, W)


def _torch_load(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    what = _sniff_foreign(path)
    if what is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(exc).__name__)
        if "weights_only" in text or "Unsupported global" in text:
            # name the object, not torch's advice to allow-list it or to unpickle with weights_only=False
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"it names {found.group(1)}" if found else "an object torch's safe loader does not accept"
            raise CheckpointError(
                f"{path} holds pickled Python objects, not only tensors and plain containers ({what}), and is "
                "refused for safety: a full model or a training container such as torch.save(model) or Ultralytics' {'model': ...} "
                "writes, and unpickling it would run code from the file. If you trust the file, "
                "fold it as it is with reparam and {trust_pickle} ({code_paths} for the directories its "
                "classes' code lives in); or save a state dict, torch.save(model.state_dict(), 'weights.pth'), and give "
                "the model's code with {model_def}", params=["trust_pickle", "code_paths", "model_def"]
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {first}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError,
            IndexError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {msg}"
        ) from None


_ONNX_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x52, 0x72}  # ModelProto fields after ir_version


def _sniff_foreign(path: Path) -> str | None:
    """What the file is, when its first bytes show it cannot be a PyTorch checkpoint; None when it may be one.

    ``torch.save`` writes a zip archive (since 1.6) or a pickle (legacy,
    protocol 2: first byte 0x80).  Anything else would reach the legacy
    unpickler, whose failures (a KeyError on a text file's first byte, or a
    "weights_only" refusal on random bytes with advice to unpickle anyway)
    would say nothing useful, so such files are named here instead.
    """
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":  # a pickle, or a zip cut short (torch says "truncated")
        return None
    if len(head) >= 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in _ONNX_FIELD_TAGS:
        return ("an ONNX model (a protobuf ModelProto); describe it (info, artifacts.onnx.describe_onnx), run it "
                "as it is (serve, profile; compare takes it as a candidate after its reference checkpoint), or give "
                "the PyTorch checkpoint it was exported from")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * max(1, len(text)):
        preview = text[:40].splitlines()[0] if text.strip() else ""
        return f"a text file (it begins with {preview!r})"
    return ("neither a zip archive (PyTorch's format since 1.6) nor a pickle (the legacy format): it begins "
            f"with bytes {head[:8].hex(' ')}; the file is not a checkpoint, or it is damaged")


# Bounds on integer architecture arguments recorded in a file: checked before anything is built, so that a
# damaged or hostile checkpoint cannot make acmix-deploy allocate gigabytes (num_classes = 4,000,000).
_ARG_LIMITS = {"num_classes": 1 << 20, "img_size": 16384, "in_chans": 4096, "window_size": 1024, "k_att": 63,
               "head": 1024}
_DEFAULT_INT_LIMIT = 4096


def validate_arch_args(arch: str, arch_args: Any, sd: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse recorded architecture arguments that are not the entrypoint's, have the wrong type or range,
    or disagree with the state dict's tensor shapes, before any model is built from them."""
    if not isinstance(arch_args, dict):
        raise CheckpointError(f"{path}: 'arch_args' is {_describe(arch_args)}, not a dict of arguments")
    params = inspect.signature(model_entrypoint(arch)).parameters
    accepted = [p for p in params if p != "deploy"]
    for key, value in arch_args.items():
        if not isinstance(key, str) or key not in accepted:
            raise CheckpointError(f"{path}: recorded argument {key!r} is not one {arch} takes "
                                  f"(it takes {', '.join(accepted)}); the file is damaged or from another version")
        annotation = params[key].annotation
        kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        if kind == "int":
            limit = _ARG_LIMITS.get(key, _DEFAULT_INT_LIMIT)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
                raise CheckpointError(f"{path}: recorded argument {key}={value!r:.60} is not an integer in 1..{limit}")
        elif kind == "str":
            if not isinstance(value, str) or len(value) > 64:
                raise CheckpointError(f"{path}: recorded argument {key}={value!r:.60} is not a short string")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise CheckpointError(f"{path}: recorded argument {key}={value!r:.60} is not a boolean")
        elif not isinstance(value, (int, float, str, bool, type(None))):
            raise CheckpointError(f"{path}: recorded argument {key} is {_describe(value)}, not a plain value")
    shapes = infer_model_args(arch, sd)
    for key, value in arch_args.items():
        if key in shapes and shapes[key] != value:
            raise CheckpointError(f"{path}: recorded argument {key}={value} disagrees with the state dict, whose "
                                  f"tensor shapes give {key}={shapes[key]}; the file is damaged")


def nonfinite_tensors(sd: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf (a diverged run, a damaged file)."""
    return [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def require_finite(loaded: "LoadedCheckpoint", path: str | os.PathLike) -> None:
    """Refuse to fold or export a model with NaN/Inf weights: its outputs would be compared as 'relative error inf'."""
    bad = nonfinite_tensors(loaded.model.state_dict())
    if bad:
        shown = ", ".join(bad[:_SHOWN]) + (f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else "")
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values: {shown}; the weights are "
                              "unusable (a diverged training run or a damaged file); use an earlier checkpoint")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:_SHOWN]
        return f"a dict with keys {keys}{' ...' if len(obj) > _SHOWN else ''}"
    return f"a {type(obj).__name__}"


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str, form: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]

    def some(keys):
        return ", ".join(keys[:_SHOWN]) + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")

    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {some(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {some(unexpected)}")
        raise CheckpointError(
            f"{path} does not match architecture {arch} ({form} form): " + "; ".join(parts)
            + ". Is {arch} right for this file?", params=["arch"]
        )
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path} does not match architecture {arch} ({form} form): tensor {k} has shape "
                f"{tuple(sd[k].shape)} in the file but {tuple(v.shape)} in the model"
            )


def read_checkpoint(path: str | os.PathLike, arch: str | None = None, model_def: str | None = None,
                    model_args: str | dict | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint into a ready model (``eval()`` mode, CPU).

    ``model_def`` (``FILE.py:FACTORY`` or ``package.module:FACTORY``, with ``model_args``) builds a user's own
    network for a weights file (a state dict, bare or wrapped), or overrides the definition recorded in a
    checkpoint that ``reparam`` wrote for such a network (a moved file).  See :mod:`acmix_deploy.user_model`.
    """
    path = Path(path)
    obj = _torch_load(path)
    if (isinstance(obj, dict) and "model_def" in obj) or model_def is not None:
        if arch is not None:
            raise CheckpointError("arch names a registry architecture and model_def a user's model: give one of them")
        user = read_user_checkpoint(obj, path, model_def, model_args)
        return LoadedCheckpoint(user.model, f"user:{user.model_def.factory}", dict(user.model_def.args), user.deploy,
                                user.source_format, user.meta, user.notes, model_def=user.model_def.record(),
                                input_size=user.input_size)
    notes: list[str] = []
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and "format_version" in obj and "state_dict" in obj:
        version = obj["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format version {version!r}; this acmix-deploy reads up to "
                f"{FORMAT_VERSION}. Upgrade acmix-deploy."
            )
        stored_arch = obj.get("arch")
        if arch is not None and stored_arch is not None and arch != stored_arch:
            raise CheckpointError(
                f"{path} was saved as architecture {stored_arch!r}, but {arch!r} was asked for; "
                "drop {arch} or pass the stored one", params=["arch"]
            )
        arch = stored_arch or arch
        arch_args = obj.get("arch_args") or {}
        if not isinstance(arch_args, dict):  # checked in full by validate_arch_args below
            raise CheckpointError(f"{path}: 'arch_args' is {_describe(arch_args)}, not a dict of arguments")
        arch_args = dict(arch_args)
        deploy = bool(obj.get("deploy", False))
        sd = obj["state_dict"]
        meta = dict(obj.get("meta") or {})
        source_format = "acmix-deploy"
        if not _is_state_dict(sd):
            raise CheckpointError(f"{path}: its 'state_dict' entry is {_describe(sd)}, not a mapping of tensors")
    else:
        sd = None
        source_format = "state_dict"
        if _is_state_dict(obj):
            sd = obj
        elif isinstance(obj, dict):
            for key in _WRAPPER_KEYS:
                if _is_state_dict(obj.get(key)):
                    sd = obj[key]
                    source_format = f"wrapped:{key}"
                    others = [k for k in obj if k != key]
                    if others:
                        notes.append(f"ignored top-level entries: {', '.join(map(str, others[:_SHOWN]))}")
                    break
        if sd is None:
            raise CheckpointError(
                f"{path} is not a model checkpoint: it holds {_describe(obj)}; expected a state dict "
                f"(name -> tensor), one under one of the keys {list(_WRAPPER_KEYS)}, or an acmix-deploy checkpoint"
            )
        if arch is None:
            raise CheckpointError(
                f"{path} is a bare state dict that does not say which architecture it belongs to; "
                f"pass it with {{arch}} (known: {', '.join(list_models())})", params=["arch"]
            )
        sd = _strip_prefix(sd, "module.")
        deploy = is_deploy_state_dict(arch, sd)  # the family knows its deploy form's keys
        arch_args = infer_model_args(arch, sd)
        if arch_args:
            notes.append("inferred from tensor shapes: " + ", ".join(f"{k}={v}" for k, v in arch_args.items()))
    model_entrypoint(arch)  # raises UnknownArchitectureError listing the known ones
    validate_arch_args(arch, arch_args, sd, path)
    nonfinite = nonfinite_tensors(sd)
    if nonfinite:
        notes.append(f"{len(nonfinite)} tensor(s) hold NaN or Inf values: {', '.join(nonfinite[:_SHOWN])}"
                     + (f" (and {len(nonfinite) - _SHOWN} more)" if len(nonfinite) > _SHOWN else ""))
    try:
        model = create_model(arch, deploy=deploy, **arch_args)
    except TypeError as exc:
        raise CheckpointError(f"{path}: cannot build {arch} with the stored arguments {arch_args}: {exc}") from None
    form = "deploy" if deploy else "training"
    if deploy:
        check_deploy_layout(sd, str(path))
    _check_state_dict(model, sd, path, arch, form)
    model.load_state_dict(sd, strict=True)
    model.eval()
    size = obj.get("input_size") if source_format == "acmix-deploy" else None
    if (isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)
            and hasattr(model, "default_cfg") and size[0] == model.default_cfg["input_size"][0]):
        model.default_cfg["input_size"] = tuple(size)  # the recorded size becomes every command's default
    return LoadedCheckpoint(model, arch, arch_args, deploy, source_format, meta, notes)


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, model_def: str | None = None,
                    model_args: str | dict | None = None) -> nn.Module:
    """Load a checkpoint (ours, a bare state dict, or a wrapped one) as a ready ``nn.Module``."""
    return read_checkpoint(path, arch, model_def, model_args).model
