"""Steps shared by the CLI commands and by Python users: load, fold, check, write.

:func:`prepare_deploy` gives the deploy form of a checkpoint in memory (the exporters, the runtime and
``compare`` start from it); :func:`reparam_checkpoint` and :func:`reparam_pickled` are ``acmix-deploy reparam``:
fold, check every output, and write the deploy checkpoint atomically only when the check passes.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .analysis import OutputDiff, check_equivalence, count_macs, count_parameters
from .checkpoint import LoadedCheckpoint, read_checkpoint, require_finite, save_checkpoint
from .errors import ConfigError, EquivalenceError, IncompleteFoldError
from .reparam import ReparamReport, reparameterize
from .user_model import PickledFold, fold_pickled, load_pickled, pickled_meta, save_pickled, save_user_checkpoint
from .util import normalize_imgsz, sha256_file

__all__ = ["Prepared", "prepare_deploy", "default_input_size", "check_output_path", "check_writable",
           "ReparamResult", "PickledReparamResult", "default_deploy_path", "reparam_checkpoint", "reparam_pickled"]


def check_output_path(out: Path, src: Path) -> None:
    """Refuse an output that is the input, lies in a missing directory, or is a directory."""
    if out.resolve() == src.resolve():
        raise ConfigError(f"output {out} is the input file; choose another path ({{output}})", params=["output"])
    if not out.parent.exists():
        raise ConfigError(f"output directory {out.parent} does not exist")
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name")
    check_writable(out.parent)


def check_writable(folder: Path) -> None:
    """Refuse a folder that cannot take a new file, before any long fold or export (exit 2, not a traceback after it).

    Tried by creating (and removing) a temporary file there, which is what the
    atomic write will do: permission bits alone do not tell (root, read-only mounts).
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".acmix-write-check.", dir=folder)
    except OSError as exc:
        raise ConfigError(f"output directory {folder} is not writable ({exc.strerror}); "
                          "choose another ({output})", params=["output"]) from None
    os.close(fd)
    os.unlink(probe)


def default_input_size(model: nn.Module, imgsz=None) -> tuple[int, int, int]:
    """``(channels, height, width)``: the model's recorded input size, with ``imgsz`` (int or (h, w)) replacing h, w."""
    c, h, w = model.default_cfg["input_size"]
    pair = normalize_imgsz(imgsz)
    if pair is not None:
        if model.default_cfg.get("channels_from_probe") and tuple(pair) != (h, w):
            from .user_model import model_channels  # a user's model: its channels seen at this size

            c = model_channels(model, tuple(pair))
        h, w = pair
    return (c, h, w)


@dataclass
class Prepared:
    loaded: LoadedCheckpoint
    training: nn.Module | None  # None when the file already held the deploy form
    deploy: nn.Module
    input_size: tuple[int, int, int]
    fold_seconds: float
    diff: OutputDiff | None  # training vs deploy, when checked
    leftovers: list = field(default_factory=list)  # reparam.Leftover: what could have been folded and was not


def _check_fold(training: nn.Module, deploy: nn.Module, input_size, batch: int, seed: int, tol: float) -> OutputDiff:
    """Every output of both forms on one random input; past ``tol`` in float32, the fold redone in float64 decides."""
    return check_equivalence(training, deploy, input_size, batch=batch, seed=seed, tol=tol,
                             fold=lambda m: reparameterize(m)[0])


def prepare_deploy(
    path: str | os.PathLike,
    arch: str | None = None,
    imgsz: int | None = None,
    check: bool = True,
    tol: float = 1e-5,
    batch: int = 2,
    seed: int = 0,
    model_def: str | None = None,
    model_args: str | dict | None = None,
) -> Prepared:
    """Load a checkpoint and return its deploy form, folding (and checking) a training form.

    ``model_def``/``model_args`` build a user's own network (see :func:`acmix_deploy.read_checkpoint`).
    Raises :class:`EquivalenceError` when the check's relative error exceeds ``tol``; what could not be
    folded is listed in ``Prepared.leftovers``.
    """
    loaded = read_checkpoint(Path(path), arch, model_def, model_args)
    require_finite(loaded, path)
    input_size = default_input_size(loaded.model, imgsz)
    if loaded.deploy:
        return Prepared(loaded, None, loaded.model, input_size, 0.0, None)
    t0 = time.perf_counter()
    deploy, report = reparameterize(loaded.model)
    fold_seconds = time.perf_counter() - t0
    diff = None
    if check:
        diff = _check_fold(loaded.model, deploy, input_size, batch, seed, tol)
        if not diff.within(tol):
            raise EquivalenceError(f"the folded model differs from the training form: {diff.summary(tol)}")
    return Prepared(loaded, loaded.model, deploy, input_size, fold_seconds, diff, report.leftovers)


# ------------------------------------------------------------------------------------ reparam: fold and write


def default_deploy_path(path: str | os.PathLike, pickled: bool = False) -> Path:
    """``X.deploy.pth`` beside ``X.pth``; a pickled container keeps its suffix (``X.deploy.pt``)."""
    path = Path(path)
    return path.with_name(path.stem + ".deploy" + ((path.suffix or ".pt") if pickled else ".pth"))


@dataclass
class ReparamResult:
    """What :func:`reparam_checkpoint` did.

    ``written`` is None when the file already held the deploy form (then nothing was folded either:
    ``deploy``, ``report`` and the statistics are None).  ``params`` and ``macs`` are (training, deploy).
    """

    source: Path
    output: Path
    loaded: LoadedCheckpoint
    input_size: tuple[int, int, int] | None = None  # (C, H, W) of the check and the MAC count
    deploy: nn.Module | None = None
    report: ReparamReport | None = None
    fold_seconds: float = 0.0
    diff: OutputDiff | None = None  # training vs deploy, every output; None without the check
    check_seconds: float | None = None
    tol: float = 1e-5
    batch: int = 2
    params: tuple[int, int] | None = None
    macs: tuple[int, int] | None = None
    written: Path | None = None

    @property
    def already_deploy(self) -> bool:
        return self.loaded.deploy

    @property
    def training(self) -> nn.Module:
        return self.loaded.model


def _stage(on_stage: Callable[[str], None] | None, text: str) -> None:
    if on_stage is not None:
        on_stage(text)


def _not_folded(leftovers: list[str]) -> str:
    shown = "; ".join(leftovers[:3]) + (f"; and {len(leftovers) - 3} more" if len(leftovers) > 3 else "")
    return (f"not folded: {len(leftovers)} foldable module(s) left ({shown}); nothing written. Pass {{allow_partial}} "
            "to write the partly folded model anyway")


def reparam_checkpoint(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    model_def: str | None = None,
    model_args: str | dict | None = None,
    imgsz=None,
    check: bool = True,
    batch: int = 2,
    tol: float = 1e-5,
    seed: int = 0,
    allow_partial: bool = False,
    trust_pickle: bool = False,
    code_paths: list[str | os.PathLike] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ReparamResult | PickledReparamResult:
    """Fold a training checkpoint, check every output of both forms, and write the deploy checkpoint atomically.

    With ``trust_pickle`` the file is a pickled model or training container, unpickled (running its code,
    with ``code_paths`` on the import path) and folded by :func:`reparam_pickled`, whose result is returned;
    ``arch``, ``model_def`` and ``model_args`` do not apply then.  ``output`` defaults to
    :func:`default_deploy_path`.  A file that already holds the deploy form is left
    alone (``written`` None).  With ``check``, both forms run on the same random input of ``batch`` rows
    (``seed``) at the model's input size (``imgsz`` replaces height and width); a relative error above
    ``tol`` that the float64 check does not clear (see :meth:`OutputDiff.within`) raises
    :class:`EquivalenceError`, and foldable modules left in place raise :class:`IncompleteFoldError` unless
    ``allow_partial``: in both cases nothing is written and the error's ``result`` holds what was measured.
    ``on_stage`` is told what is being done ("reading ...", "folding", "checking ...") as it starts.
    The written file records its source (name and sha256) and the check's figures in its ``meta``.
    """
    if trust_pickle:
        given = [name for name, value in (("arch", arch), ("model_def", model_def), ("model_args", model_args))
                 if value is not None]
        if given:
            names = ", ".join("{" + g + "}" for g in given)
            raise ConfigError(f"{names} {'does' if len(given) == 1 else 'do'} not apply with {{trust_pickle}}: the "
                              "pickled file holds its model", params=[*given, "trust_pickle"])
        return reparam_pickled(path, output, code_paths=code_paths, imgsz=imgsz, check=check, batch=batch, tol=tol,
                               seed=seed, allow_partial=allow_partial, on_stage=on_stage)
    if code_paths:
        raise ConfigError("{code_paths} only applies with {trust_pickle}", params=["code_paths", "trust_pickle"])
    path = Path(path)
    out = Path(output) if output is not None else default_deploy_path(path)
    check_output_path(out, path)
    _stage(on_stage, f"reading {path}")
    loaded = read_checkpoint(path, arch, model_def, model_args)
    result = ReparamResult(path, out, loaded, tol=tol, batch=batch)
    if loaded.deploy:
        return result
    require_finite(loaded, path)  # NaN/Inf weights: name the tensors, not "relative error inf"
    result.input_size = input_size = default_input_size(loaded.model, imgsz)
    model = loaded.model
    _stage(on_stage, "folding")
    t0 = time.perf_counter()
    result.deploy, result.report = reparameterize(model)
    result.fold_seconds = time.perf_counter() - t0
    if check:
        _stage(on_stage, f"checking every output of both forms at {'x'.join(map(str, input_size))}")
        t1 = time.perf_counter()
        result.diff = _check_fold(model, result.deploy, input_size, batch, seed, tol)
        result.check_seconds = time.perf_counter() - t1
    result.params = (count_parameters(model), count_parameters(result.deploy))
    result.macs = (count_macs(model, input_size), count_macs(result.deploy, input_size))
    diff, report = result.diff, result.report
    if diff is not None and not diff.within(tol):
        exc = EquivalenceError(f"check failed: {diff.summary()} is above {{tol}} {tol:g}; nothing written",
                               params=["tol"])
        exc.result = result
        raise exc
    if report.leftovers and not allow_partial:
        exc = IncompleteFoldError(_not_folded([x.describe() for x in report.leftovers]), params=["allow_partial"])
        exc.result = result
        raise exc
    meta: dict[str, Any] = {"source": path.name, "source_sha256": sha256_file(path)}
    if diff is not None:
        meta.update({"check_rel_error": diff.rel, "check_input": list(input_size)})
    if report.leftovers:
        meta["not_folded"] = [x.describe() for x in report.leftovers]
    if report.unrecognised:
        meta["not_recognised"] = list(report.unrecognised)
    _stage(on_stage, f"writing {out}")
    if loaded.model_def is not None:
        result.written = save_user_checkpoint(result.deploy, out, loaded.model_def, report.plan, input_size, meta)
    else:
        result.written = save_checkpoint(result.deploy, out, meta=meta)
    return result


@dataclass
class PickledReparamResult:
    """What :func:`reparam_pickled` did: one :class:`PickledFold` per module of the file, the entries kept."""

    source: Path
    output: Path
    folds: list[PickledFold]
    kept: list[str]  # the container's entries that are not modules, written back as they were
    tol: float = 1e-5
    written: Path | None = None


def reparam_pickled(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    code_paths: list[str | os.PathLike] | None = None,
    imgsz=None,
    check: bool = True,
    batch: int = 2,
    tol: float = 1e-5,
    seed: int = 0,
    allow_partial: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> PickledReparamResult:
    """Fold every module of a pickled model or training container (TRUSTED: unpickling runs code) and write it back.

    See :func:`acmix_deploy.user_model.fold_pickled`.  Each module's check compares every output against
    ``tol`` (judged in float64 where float32 rounding alone exceeds it, see :meth:`OutputDiff.within`); a failure raises :class:`EquivalenceError`, foldable modules left raise :class:`IncompleteFoldError`
    unless ``allow_partial``; nothing is written then, and the error's ``result`` holds the folds.  A dict
    container gets an ``acmix_deploy`` entry (who folded it, when, the source's sha256).
    """
    path = Path(path)
    out = Path(output) if output is not None else default_deploy_path(path, pickled=True)
    check_output_path(out, path)
    _stage(on_stage, f"unpickling {path} (trusted)")
    obj = load_pickled(path, [str(p) for p in code_paths or []])
    _stage(on_stage, "folding every module in the file")
    folded, folds = fold_pickled(obj, imgsz, check=check, batch=batch, seed=seed, tol=tol)
    kept = [str(k) for k in obj if k not in {f.key for f in folds}] if isinstance(obj, dict) else []
    result = PickledReparamResult(path, out, folds, kept, tol)
    failed = [f"{f.key}: {f.diff.summary()}" for f in folds if f.diff is not None and not f.diff.within(tol)]
    if failed:
        exc = EquivalenceError(f"check failed: {'; '.join(failed)} above {{tol}} {tol:g}; nothing written",
                               params=["tol"])
        exc.result = result
        raise exc
    left = [f"{f.key}: {x.describe()}" for f in folds for x in f.report.leftovers]
    if left and not allow_partial:
        exc = IncompleteFoldError(_not_folded(left), params=["allow_partial"])
        exc.result = result
        raise exc
    if isinstance(folded, dict):
        folded["acmix_deploy"] = pickled_meta(path)
    _stage(on_stage, f"writing {out}")
    result.written = save_pickled(folded, out)
    return result
