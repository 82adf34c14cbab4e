"""``python -m acmix_deploy.cli``: the ``acmix-deploy`` command line (as ``python -m acmix_deploy``)."""

from . import app

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="acmix-deploy")
