"""``python -m acmix_deploy``: the ``acmix-deploy`` command line."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="acmix-deploy")
