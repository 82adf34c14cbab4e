"""Packaging: one version source, ``python -m acmix_deploy``, a CLI that starts without importing torch."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import acmix_deploy

ROOT = Path(__file__).resolve().parents[1]


def test_version_has_one_source():
    assert importlib.metadata.version("acmix-deploy") == acmix_deploy.__version__
    assert 'version = "' not in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]


def test_cli_module_does_not_import_torch():
    code = "import sys, acmix_deploy.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_python_m_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "acmix_deploy", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"acmix-deploy {acmix_deploy.__version__}"


def test_lazy_names_resolve():
    for name in acmix_deploy.__all__:
        assert getattr(acmix_deploy, name) is not None
    assert acmix_deploy.fold.fuse_conv_bn  # submodules resolve on first use too


def test_typed_marker_and_license_ship():
    assert (ROOT / "acmix_deploy" / "py.typed").exists()
    assert "Apache License" in (ROOT / "LICENSE").read_text()
