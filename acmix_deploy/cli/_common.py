"""What every command shares: the consoles, safe printing of file data, errors, tables, ``--imgsz`` and flag names."""

from __future__ import annotations

import os
import re
import sys
from typing import Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError


def _split_imgsz(args: list[str]) -> list[str]:
    """Accept ``--imgsz H W`` (two values, as Ultralytics users write it) by rewriting it to two ``--imgsz``
    (and ``--max-imgsz H W`` of ``serve`` alike)."""
    out, i = [], 0
    while i < len(args):
        if args[i] in ("--imgsz", "--max-imgsz") and i + 2 < len(args) \
                and args[i + 1].isdigit() and args[i + 2].isdigit():
            out += [args[i], args[i + 1], args[i], args[i + 2]]
            i += 3
            continue
        out.append(args[i])
        i += 1
    return out


class _Group(TyperGroup):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _split_imgsz(list(args)))


# Not a terminal (a pipe, a log, CI): 160 columns unless COLUMNS says otherwise, so that tables are not squeezed.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err_console = Console(stderr=True)


_ANSI_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text) -> str:
    """``text`` from a file or a path, fit for Rich: escape sequences and control characters removed, markup escaped.

    Checkpoint metadata, key names and paths are data: printed as Rich markup,
    ``[/bold]`` in them raised MarkupError, and ANSI escapes in a file's
    ``meta`` reached the terminal raw.  Removed characters are shown as ``?``.
    """
    return escape(_CONTROL.sub("?", _ANSI_SEQUENCE.sub("?", str(text))))


def flag(param: str) -> str:
    """The option that sets library parameter ``param``: :data:`FLAGS`, :data:`OTHER_FLAGS`, else ``--`` and the
    name with dashes; a parameter with its value, ``fmt='onnx'``, is the option and the value (``--format onnx``)."""
    spelled = FLAGS.get(param) or OTHER_FLAGS.get(param)
    if spelled:
        return spelled
    name, given, value = param.partition("=")
    if given:
        return f"{flag(name)} {value.strip(chr(39))}"
    return "--" + param.replace("_", "-")


def _fail(exc: Exception, code: int = 2) -> None:
    """Print ``exc`` (its parameters spelled as this command line's flags) and exit with ``code``."""
    text = exc.spell(flag) if isinstance(exc, AcmixDeployError) else str(exc)
    err_console.print(f"[bold red]error:[/] {_safe(text)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_table(table: Table) -> None:
    """Print ``table`` without ever cutting a number ("1234.…").

    Columns whose cells are single tokens (numbers, names, flags) never wrap; text columns wrap between words
    and fold long words.  When the tokens do not fit the console even so, the borders get lighter, and
    then the table is printed wider than the console (a narrow terminal wraps the lines; logs keep them).
    """
    from rich import box

    table.expand = False
    widths = []
    for column in table.columns:
        cells = [c.plain if hasattr(c, "plain") else str(c) for c in column._cells]
        column.overflow = "fold"
        if all(" " not in c for c in cells):
            column.no_wrap = True
            widths.append(max([len(str(column.header)), *map(len, cells)]))
        else:
            widths.append(min(12, max([len(w) for c in cells for w in c.split()] or [1])))

    def need() -> int:
        pad = table.padding[1] + table.padding[3] if len(table.padding) == 4 else 2 * table.padding[-1]
        borders = 0 if table.box is None else len(widths) + 1 - (0 if table.show_edge else 2)
        return sum(widths) + pad * len(widths) + borders

    if need() > console.width:
        table.box, table.show_edge = box.SIMPLE_HEAD, False
    width = need()
    if width <= console.width:
        console.print(table)
    else:
        Console(file=console.file, width=width, color_system=console.color_system,
                force_terminal=console.is_terminal).print(table)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"



def _imgsz(values: Optional[list[int]], flag: str = "--imgsz"):
    """``--imgsz N`` (square) or ``--imgsz H W`` (given as two values) -> None, N or (H, W); ``flag`` names the
    option in the error (``serve --max-imgsz`` takes sizes the same way)."""
    if not values:
        return None
    if len(values) > 2:
        raise AcmixDeployError(f"{flag} takes one size (N) or two (H W), got {len(values)}: {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


IMGSZ_HELP = "Input size: N (square) or H W (default: the model's)."


def _safe_imgsz(values):
    try:
        return _imgsz(values)
    except AcmixDeployError as exc:
        _fail(exc)


def _comparison_table(title: str, rows) -> Table:
    """One row per runner, batch and output; the output column appears for models with several outputs."""
    several = len({getattr(row, "output", "logits") for row in rows}) > 1
    table = Table(title=title)
    cols = ("runner", "batch") + (("output",) if several else ()) + ("max abs error", "relative error", "top-1 agreement")
    for col in cols:
        table.add_column(col, justify="left" if col in ("runner", "output") else "right")
    for row in rows:
        top1 = "" if row.diff.top1_agreement is None else f"{row.diff.top1_agreement:.1%}"
        which = (escape(row.output),) if several else ()
        table.add_row(row.runner, str(row.batch), *which, f"{row.diff.max_abs:.3g}", f"{row.diff.rel:.3g}", top1)
    return table


# ExportOptions field -> the flag of ``acmix-deploy export`` that sets it (for errors naming a parameter).
FLAGS = {
    "output": "--output", "arch": "--arch", "model_def": "--model-def", "model_args": "--model-args",
    "imgsz": "--imgsz", "batch": "--batch", "dynamic": "--static", "dynamic_hw": "--dynamic-hw", "opset": "--opset", "min_batch": "--min-batch",
    "opt_batch": "--opt-batch", "min_shape": "--min-shape", "opt_shape": "--opt-shape", "max_shape": "--max-shape", "max_batch": "--max-batch", "device": "--device", "simplify": "--no-simplify",
    "fp16": "--fp16", "int8": "--int8", "calib": "--calib", "calib_limit": "--calib-limit", "tol": "--tol",
    "min_top1": "--min-top1", "seed": "--seed", "workspace_gb": "--workspace", "timing_cache": "--timing-cache",
    "opt_level": "--opt-level", "trt_typing": "--trt-weak-typing", "output_names": "--output-names",
    "engine": "--engine", "instances": "--instances", "model_name": "--name",
    "max_queue_delay_us": "--max-queue-delay-us", "force": "--force", "cpu_isa": "--cpu-isa",
}
# Parameters of the other commands whose flag is not ``--`` + the name with dashes, and what messages write
# for a value a flag stands for (``dynamic=False`` is ``--static``; ``typing`` is ``build_engine``'s
# name for ``trt_typing``; ``precision`` is chosen by two flags).
OTHER_FLAGS = {"code_paths": "--code-path", "fmt": "--format", "backends": "--backend", "batches": "--batch",
               "onnx_backends": "--onnx-backend", "conv_layouts": "--conv-layout", "dynamic=False": "--static",
               "dynamic=True": "--dynamic",
               "typing": "--trt-weak-typing", "precision": "--fp16 / --int8"}
