"""``list-models`` and ``info``: what the registry holds and what a checkpoint file contains."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError
from ._common import _fail, _print_table, _safe


def list_models_cmd(pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'acmix_*'.")) -> None:
    """List the registered architectures."""
    from ..models import list_models, model_entrypoint

    table = Table("architecture", "description")
    for name in list_models(pattern):
        doc = ((model_entrypoint(name).__doc__ or "").strip().splitlines() or [""])[0]
        # Sphinx roles and literals read as plain text: ":func:`acmix_resnet_tiny`" -> "acmix_resnet_tiny"
        doc = re.sub(r":[a-z]+(?::[a-z]+)?:`~?([^`]*)`", r"\1", doc).replace("``", "")
        table.add_row(name, escape(doc))
    _print_table(table)


def info(
    ckpt: Path = typer.Argument(..., help="Checkpoint file (ours, a bare state dict, or a wrapped one)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture, for files that do not record it."),
) -> None:
    """Describe a checkpoint: architecture, form, parameters, keys."""
    from ..analysis import count_parameters
    from ..checkpoint import read_checkpoint
    from ..modules import (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, XVolution,
                          XVolutionDeploy)

    try:
        loaded = read_checkpoint(ckpt, arch)
    except AcmixDeployError as exc:
        _fail(exc)
    model = loaded.model
    sd = model.state_dict()
    prefixes: dict[str, int] = {}
    for k in sd:
        prefixes[k.split(".")[0]] = prefixes.get(k.split(".")[0], 0) + 1
    table = Table(show_header=False, title=_safe(ckpt))
    table.add_row("architecture", _safe(loaded.arch))
    table.add_row("arguments", _safe(", ".join(f"{k}={v}" for k, v in loaded.arch_args.items()) or "(defaults)"))
    table.add_row("form", "deploy (folded)" if loaded.deploy else "training")
    table.add_row("file format", loaded.source_format)
    table.add_row("parameters", f"{count_parameters(model):,}")
    acmix_types = (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy)
    table.add_row("ACmix blocks", str(sum(isinstance(m, acmix_types) for m in model.modules())))
    n_xvolution = sum(isinstance(m, (XVolution, XVolutionDeploy)) for m in model.modules())
    if n_xvolution:
        table.add_row("X-volution blocks", str(n_xvolution))
    table.add_row("tensors", f"{len(sd)} ({', '.join(f'{p}: {n}' for p, n in prefixes.items())})")
    table.add_row("input size", "x".join(map(str, model.default_cfg["input_size"])))
    for key, value in loaded.meta.items():
        table.add_row(_safe(f"meta.{key}"), _safe(value))
    for note in loaded.notes:
        table.add_row("note", _safe(note))
    _print_table(table)
