"""The ``acmix-deploy`` command line: thin Typer commands over the library.

One module per command group (``models``: list-models, info; ``fold``: reparam; ``export``: export, formats;
``check``: compare; ``perf``: profile, report; ``demo``; ``serve``), what they share in ``_common``.  Commands
turn flags into library parameters and render the results; the work is the library's.

The command modules import the library inside each command function, not at the top: ``acmix-deploy --version``
and ``--help`` then start without importing torch (seconds).  This package is the only place where the
package's own modules are imported lazily, and only for that reason.

Exit codes: 0 success, 1 a check failed (outputs differ beyond tolerance),
2 bad input (missing or corrupt file, wrong architecture, bad argument).
"""

from __future__ import annotations

import typer

from .._version import __version__
from . import check, demo, export, fold, models, perf, serve
from ._common import FLAGS, _Group, _safe, console  # FLAGS and _safe: the flag names and safe printing, for tests

__all__ = ["app", "main", "FLAGS"]

app = typer.Typer(
    cls=_Group,
    name="acmix-deploy",
    help="Fold ACmix / X-volution models into deployable form, check them, and ship them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"acmix-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    """acmix-deploy: reparameterize, check and ship ACmix-style models."""


# The order here is the order of ``acmix-deploy --help``.
app.command("list-models")(models.list_models_cmd)
app.command()(models.info)
app.command()(fold.reparam)
app.command()(export.export)
app.command()(export.formats)
app.command()(check.compare)
app.command()(perf.profile)
app.command()(perf.report)
app.command()(demo.demo)
app.command()(serve.serve)
