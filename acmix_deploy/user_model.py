"""Users' own networks: build them from their code, fold them, record how to rebuild them.

Two ways in, with different trust:

* **A model definition** (``model_def="FILE.py:FACTORY"`` or ``"package.module:FACTORY"``, with
  ``model_args``, a dict or JSON): the user's code builds the network, the weights come from a state dict read with
  ``torch.load(weights_only=True)`` (bare, or under ``model``/``state_dict``/``ema``/``model_state_dict``),
  loaded strictly.  The deploy checkpoint records the definition (the reference as given, the resolved file,
  the factory, its arguments, the file's sha256) and the fold plan; every later command rebuilds the deploy
  model from that record: import, build, redo the recorded structure changes, load the folded weights strictly.
* **A pickled full model** (``torch.save(model)``, or training containers such as Ultralytics'
  ``{"model": DetectionModel, "ema": ..., "epoch": ...}``): unpickling runs code from the file, so it is refused
  unless the caller says ``trust_pickle=True``; then every module in it is folded (in
  float64, cast back to its stored dtype) and the container is written back with its other entries kept.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .analysis import OutputDiff, check_equivalence
from ._version import __version__
from .errors import CheckpointError, ConfigError
from .reparam import FoldPlan, ReparamReport, reparameterize
from .util import atomic_write, normalize_imgsz, sha256_file

__all__ = ["ModelDef", "parse_model_def", "build_user_model", "find_state_dict", "load_user_weights",
           "model_channels", "user_checkpoint_payload", "rebuild_from_record", "load_pickled", "fold_pickled",
           "PickledFold", "UserCheckpoint", "DEFAULT_IMGSZ", "FORMAT_VERSION_USER",
           "read_user_checkpoint"]

FORMAT_VERSION_USER = 2  # checkpoints that hold a user's model definition instead of a registry architecture
DEFAULT_IMGSZ = 640  # the input size checks use for users' models when none is recorded or given (YOLO's)
_WEIGHT_KEYS = ("model", "state_dict", "ema", "model_state_dict", "model_state")


@dataclass
class ModelDef:
    """Where a user's network comes from: ``FILE.py:FACTORY`` or ``package.module:FACTORY`` plus arguments."""

    ref: str
    factory: str
    args: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # resolved file (file references)
    module: str | None = None  # dotted module (module references)
    sha256: str | None = None  # of the file, when there is one

    def record(self) -> dict[str, Any]:
        return {"ref": self.ref, "factory": self.factory, "args": dict(self.args), "path": self.path,
                "module": self.module, "sha256": self.sha256}


def _parse_args(model_args: str | dict | None) -> dict[str, Any]:
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        args = model_args
    else:
        try:
            args = json.loads(model_args)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model_args is not valid JSON ({exc.msg} at character {exc.pos}): {model_args!r}") from None
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ConfigError(f"model_args must be a JSON object of keyword arguments, got {model_args!r}")
    return dict(args)


def parse_model_def(ref: str, model_args: str | dict | None = None, base: Path | None = None) -> ModelDef:
    """Check a model reference (``FILE.py:FACTORY`` or ``package.module:FACTORY``) without importing it."""
    if not isinstance(ref, str) or ref.count(":") < 1:
        raise ConfigError(f"model_def must be FILE.py:FACTORY or package.module:FACTORY, got {ref!r}")
    target, _, factory = ref.rpartition(":")
    if not factory.isidentifier() or not target:
        raise ConfigError(f"model_def {ref!r}: {factory!r} is not a Python name of a factory function or class")
    args = _parse_args(model_args)
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise ConfigError(f"model_def {ref!r}: the file {path} does not exist")
        path = path.resolve()
        return ModelDef(ref, factory, args, path=str(path), sha256=sha256_file(path))
    if not all(part.isidentifier() for part in target.split(".")):
        raise ConfigError(f"model_def {ref!r}: {target!r} is neither a .py file nor a dotted module name")
    return ModelDef(ref, factory, args, module=target)


@contextlib.contextmanager
def _on_path(dirs: list[str]):
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def _import_factory(md: ModelDef) -> Callable[..., Any]:
    try:
        if md.path is not None:
            name = f"acmix_deploy_user_{hashlib.sha1(md.path.encode()).hexdigest()[:12]}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, md.path)
                if spec is None or spec.loader is None:
                    raise ConfigError(f"model_def {md.ref!r}: {md.path} cannot be imported as a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    with _on_path([str(Path(md.path).parent)]):  # its sibling imports
                        spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
        else:
            module = importlib.import_module(md.module)  # type: ignore[arg-type]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"model_def {md.ref!r}: importing it failed: {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:  # a script's own argument parsing or exit() at import time
        raise ConfigError(f"model_def {md.ref!r}: importing it called sys.exit({exc.code!r}); move the "
                          "script's top-level code under if __name__ == '__main__':") from None
    factory = getattr(module, md.factory, None)
    if not callable(factory):
        raise ConfigError(f"model_def {md.ref!r}: the module has no callable {md.factory!r}")
    return factory


def build_user_model(md: ModelDef) -> nn.Module:
    """Import the definition and call its factory with its arguments; the result must be an ``nn.Module``."""
    factory = _import_factory(md)
    try:
        model = factory(**md.args)
    except Exception as exc:
        raise ConfigError(f"model_def {md.ref!r}: {md.factory}(**{md.args}) failed: {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:
        raise ConfigError(f"model_def {md.ref!r}: {md.factory}(**{md.args}) called sys.exit({exc.code!r})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model_def {md.ref!r}: {md.factory} returned a {type(model).__name__}, not an nn.Module")
    return model


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in a weights file: bare, or under one of ``model``/``state_dict``/``ema``/... ."""
    if _is_state_dict(obj):
        sd, where = obj, "state_dict"
    else:
        key = next((k for k in _WEIGHT_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))), None)
        if key is None:
            keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{source} holds no state dict (bare or under {', '.join(_WEIGHT_KEYS)}): {keys}")
        sd, where = obj[key], f"wrapped:{key}"
    if all(k.startswith("module.") for k in sd):  # DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, where


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what does not match."""
    expected = model.state_dict()
    # A missing num_batches_tracked (files written before it existed, or trimmed by conversion scripts) is the
    # model's own counter: filled in, as torch's BatchNorm does for state dicts of its first version.
    fill = [k for k in expected if k not in sd and k.rpartition(".")[2] == "num_batches_tracked"]
    if fill:
        metadata = getattr(sd, "_metadata", None)
        sd = OrderedDict(sd)
        for k in fill:
            sd[k] = expected[k].detach().clone()
        if metadata is not None:
            sd._metadata = metadata  # type: ignore[attr-defined]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", shapes)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise CheckpointError(f"{source} does not match {what}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def load_user_weights(model: nn.Module, obj: Any, source: str, what: str) -> str:
    """Load the state dict found in ``obj`` (already read with ``weights_only=True``) strictly; returns its place."""
    sd, where = find_state_dict(obj, source)
    load_strict(model, sd, source, what)
    return where


class _FirstConv(BaseException):
    """Raised by the probe's hook at the first convolution a forward pass reaches (a BaseException: a user's
    ``except Exception`` in a forward does not swallow it)."""

    def __init__(self, consistent: bool):
        super().__init__()
        self.consistent = consistent


def model_channels(model: nn.Module, hw: tuple[int, int] = (64, 64)) -> int:
    """The input channels of the network.

    The first convolution in module order is not always the first one run (a block defined before the stem,
    a space-to-depth ``Focus`` in front of it), so candidate channel counts (that convolution's, then 3, 1, 4
    and 2) are tried in turn: a forward pass on a ``hw`` input of that many channels is stopped at the first
    convolution it reaches, and the count is taken when that convolution receives the channels it expects.
    Nothing after that convolution runs.  When no candidate gets there (the forward fails before any
    convolution), the module-order rule stands.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("the model has no Conv2d to read its input channels from; give the input size explicitly")
    first = int(convs[0].in_channels)
    if any(isinstance(c, nn.modules.lazy.LazyModuleMixin) for c in convs):
        return first  # a lazy convolution would take its channels from the probe itself

    def stop(module, args):
        x = args[0] if args else None
        raise _FirstConv(isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == module.in_channels)

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    device = param.device if param is not None else "cpu"
    hooks = [c.register_forward_pre_hook(stop) for c in convs]
    modes = [(m, m.training) for m in model.modules()]  # per module: frozen BatchNorms stay frozen
    model.eval()
    try:
        for c in dict.fromkeys((first, 3, 1, 4, 2)):
            try:
                with torch.no_grad():
                    model(torch.zeros(1, c, *hw, dtype=dtype, device=device))
            except _FirstConv as reached:
                if reached.consistent:
                    return c
            except Exception:  # this channel count does not get the input to a convolution
                continue
            else:  # a whole forward without an nn.Conv2d (functional convolutions): nothing to learn here
                break
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return first


def user_input_size(model: nn.Module, imgsz=None, recorded=None) -> tuple[int, int, int]:
    """``(C, H, W)``: channels from the model, size from ``imgsz`` (int or (h, w)), else the recorded one, else 640."""
    pair = normalize_imgsz(imgsz)
    if pair is None and recorded is not None:
        return tuple(int(v) for v in recorded)  # type: ignore[return-value]
    h, w = pair or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
    return (model_channels(model, (h, w)), h, w)


def user_checkpoint_payload(deploy: nn.Module, md: ModelDef, plan: FoldPlan, input_size, meta: dict) -> dict:
    """Our checkpoint format for a user's model (format version 2): weights plus the record to rebuild it."""
    return {
        "format_version": FORMAT_VERSION_USER,
        "arch": f"user:{md.factory}",
        "arch_args": dict(md.args),
        "model_def": md.record(),
        "fold_plan": plan.as_dict(),
        "input_size": [int(v) for v in input_size],
        "deploy": True,
        "state_dict": {k: v.detach().cpu() for k, v in deploy.state_dict().items()},
        "meta": meta,
    }


def _record_model_def(rec: Any, override: str | None, source: str, notes: list[str]) -> ModelDef:
    if not isinstance(rec, dict) or not isinstance(rec.get("ref"), str) or not isinstance(rec.get("factory"), str):
        raise CheckpointError(f"{source}: its model_def record is malformed: {str(rec)[:200]}")
    args = rec.get("args") or {}
    if not isinstance(args, dict):
        raise CheckpointError(f"{source}: its model_def arguments are not a mapping: {args!r}")
    if override is not None:
        md = parse_model_def(override, args)
        notes.append(f"model definition {override} (given) instead of the recorded {rec['ref']}")
        recorded_sha = rec.get("sha256")
        if md.sha256 and recorded_sha and md.sha256 != recorded_sha:
            msg = (f"{md.path} differs from the file the checkpoint was folded with (sha256 {recorded_sha[:12]}..., "
                   f"now {md.sha256[:12]}...); the rebuild is checked against the stored weights only")
            warnings.warn(msg, stacklevel=3)
            notes.append("warning: " + msg)
        return md
    path, module = rec.get("path"), rec.get("module")
    if path:
        if not Path(path).is_file():
            raise CheckpointError(
                f"{source} was folded from the model definition {rec['ref']} ({path}), which no longer exists; "
                "pass its new place with {model_def} (FILE.py:FACTORY)", params=["model_def"])
        md = ModelDef(rec["ref"], rec["factory"], dict(args), path=path, sha256=sha256_file(path))
        recorded_sha = rec.get("sha256")
        if recorded_sha and md.sha256 != recorded_sha:
            msg = (f"{path} changed since {source} was folded (sha256 {recorded_sha[:12]}... -> {md.sha256[:12]}...); "
                   "rebuilding from the changed file")
            warnings.warn(msg, stacklevel=3)
            notes.append("warning: " + msg)
        return md
    if module:
        return ModelDef(rec["ref"], rec["factory"], dict(args), module=module)
    raise CheckpointError(f"{source}: its model_def record names neither a file nor a module")


def rebuild_from_record(obj: dict, source: str, override: str | None = None) -> tuple[nn.Module, ModelDef, list[str]]:
    """The deploy model of a user-model checkpoint: import, build, redo the fold plan, load strictly (eval, CPU)."""
    notes: list[str] = []
    md = _record_model_def(obj.get("model_def"), override, source, notes)
    model = build_user_model(md)
    plan = FoldPlan.from_dict(obj.get("fold_plan") or {})
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = reparameterize(model.eval(), inplace=True, plan=plan)
    except (ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"{source}: the recorded fold plan does not fit {md.ref}: {exc}") from None
    sd = obj.get("state_dict")
    if not _is_state_dict(sd):
        raise CheckpointError(f"{source}: its 'state_dict' entry is not a mapping of tensors")
    load_strict(model, sd, source, f"the deploy form of {md.ref}")
    size = obj.get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
        raise CheckpointError(f"{source}: its input_size record {size!r} is not [channels, height, width]")
    model.default_cfg = {"input_size": tuple(size)}
    return model.eval(), md, notes


# ------------------------------------------------------------------------------------------ pickled full models

def load_pickled(path: str | os.PathLike, code_paths: list[str] | None = None) -> Any:
    """Unpickle a full model or training container (``weights_only=False``: this RUNS CODE from the file).

    Only called when the user said they trust the file.  ``code_paths`` go on ``sys.path`` first, so that
    the classes the pickle names (the fork's ``models.common`` etc.) can be imported.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    for d in code_paths or []:
        if not Path(d).is_dir():
            raise ConfigError(f"code path {d} is not a directory")
    try:
        with _on_path([str(Path(d).resolve()) for d in code_paths or []]):
            return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} names a class that cannot be imported ({exc}); put the code that defines it on the "
            "import path ({code_paths})", params=["code_paths"]) from None
    except Exception as exc:
        raise CheckpointError(f"{path} could not be unpickled: {type(exc).__name__}: {exc}") from None


@dataclass
class PickledFold:
    """One module of a pickled container, folded."""

    key: str  # the container key ("model", "ema") or "<file>" for a bare pickled module
    dtype: str
    report: ReparamReport
    diff: OutputDiff | None


def _module_entries(obj: Any) -> list[str | None]:
    if isinstance(obj, nn.Module):
        return [None]
    if isinstance(obj, dict):
        return [k for k, v in obj.items() if isinstance(v, nn.Module)]
    return []


def _fold64(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # leftovers are reported through the ReparamReport
        return reparameterize(module, inplace=True)[0]


def fold_pickled(obj: Any, imgsz=None, check: bool = True, batch: int = 2, seed: int = 0, tol: float | None = 1e-5
                 ) -> tuple[Any, list[PickledFold]]:
    """Fold every module of an unpickled object; returns the object with the folded modules in place.

    A bare module is replaced; in a dict container every ``nn.Module`` value is folded and every other entry is
    kept as it is.  Each module is folded in float64 and cast back to its stored dtype and device; with
    ``check`` the float32 forms of both are compared on every output, judged as state-dict checkpoints are
    (:func:`acmix_deploy.analysis.check_equivalence` with ``tol``): where the float32 figure exceeds ``tol``,
    the fold is redone on a float64 copy of the training form and compared there, so a network whose own
    float32 rounding exceeds ``tol`` is not mistaken for a wrong fold.  Accept a fold with
    ``fold.diff.within(tol)``.
    """
    keys = _module_entries(obj)
    if not keys:
        what = f"a dict with keys {list(obj)[:8]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"the pickled file holds no nn.Module ({what})")
    out = obj if isinstance(obj, nn.Module) else dict(obj)
    folds: list[PickledFold] = []
    for key in keys:
        module = obj if key is None else obj[key]
        param = next(iter(module.parameters()), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        training = module.training
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            deploy, report = reparameterize(copy.deepcopy(module).to("cpu", torch.float64).eval(), inplace=True)
        diff = None
        if check:
            ref = copy.deepcopy(module).to("cpu", torch.float32).eval()
            cand = copy.deepcopy(deploy).to(torch.float32).eval()
            size = user_input_size(ref, imgsz)
            diff = check_equivalence(ref, cand, size, batch=batch, seed=seed, tol=tol, fold=_fold64)
        deploy = deploy.to(device=device, dtype=dtype).train(training)
        folds.append(PickledFold("<file>" if key is None else str(key), str(dtype).replace("torch.", ""), report, diff))
        if key is None:
            out = deploy
        else:
            out[key] = deploy
    return out, folds


def pickled_meta(source: Path) -> dict[str, Any]:
    return {"folded_by": f"acmix-deploy {__version__}", "folded_at":
            _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "source_sha256": sha256_file(source)}


@dataclass
class UserCheckpoint:
    """What :func:`read_user_checkpoint` learnt from a file; :func:`acmix_deploy.checkpoint.read_checkpoint` turns
    it into a ``LoadedCheckpoint`` (arch ``user:FACTORY``, arch_args the factory's arguments)."""

    model: nn.Module
    model_def: ModelDef
    deploy: bool
    source_format: str  # "acmix-deploy" (a file reparam wrote) or where the weights were found
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_size: tuple[int, int, int] | None = None  # the recorded (C, H, W) of a folded checkpoint


def read_user_checkpoint(obj: Any, path: Path, model_def: str | None, model_args: str | dict | None
                         ) -> UserCheckpoint:
    """:func:`acmix_deploy.checkpoint.read_checkpoint` for users' models (see the module docstring)."""
    source = str(path)
    if isinstance(obj, dict) and "model_def" in obj:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION_USER:
            raise CheckpointError(f"{path} has checkpoint format version {version!r}; this acmix-deploy reads up to "
                                  f"{FORMAT_VERSION_USER}. Upgrade acmix-deploy.")
        if model_args is not None and model_def is None:
            raise ConfigError("model_args without model_def: the checkpoint records its model's arguments")
        model, md, notes = rebuild_from_record(obj, source, model_def)
        meta = dict(obj.get("meta") or {})
        return UserCheckpoint(model, md, True, "acmix-deploy", meta, notes,
                              input_size=tuple(model.default_cfg["input_size"]))
    md = parse_model_def(model_def, model_args)  # type: ignore[arg-type]
    model = build_user_model(md)
    where = load_user_weights(model, obj, source, f"the model built by {md.ref}")
    model.eval()
    cfg = getattr(model, "default_cfg", None)
    if not (isinstance(cfg, dict) and len(cfg.get("input_size") or ()) == 3):
        # (C, 640, 640); imgsz overrides H, W, and the channels are found again at that size (a model that takes
        # only its own size, a patch embedding with an assert, cannot run at 640 to show its channels)
        model.default_cfg = {"input_size": user_input_size(model), "channels_from_probe": True}
    return UserCheckpoint(model, md, False, where)


def save_user_checkpoint(deploy: nn.Module, path: str | os.PathLike, model_def: dict[str, Any], plan: FoldPlan,
                         input_size, meta: dict[str, Any] | None = None) -> Path:
    """Write the deploy form of a user's model with the record that rebuilds it, atomically (weights only)."""
    rec = dict(model_def)
    md = ModelDef(rec["ref"], rec["factory"], dict(rec.get("args") or {}), rec.get("path"), rec.get("module"),
                  rec.get("sha256"))
    full_meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "package_version": __version__, "torch_version": str(torch.__version__)}
    full_meta.update(meta or {})
    payload = user_checkpoint_payload(deploy, md, plan, input_size, full_meta)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def save_pickled(obj: Any, path: str | os.PathLike) -> Path:
    """Write a folded pickled container (or module) back with ``torch.save``, atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
