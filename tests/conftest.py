"""Shared fixtures (pytest applies this file to every folder below).  Shared helpers that are not fixtures,
and the tolerances of the equivalence tests, are in tests/helpers."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def _training_checkpoint(tmp_path_factory):
    """Built and saved once: acmix_resnet_tiny (4 classes, random weights and BatchNorm statistics, seed 2)
    in training form, and its checkpoint file."""
    import acmix_deploy as ad
    from acmix_deploy.testing import randomize_model

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=4), 2).eval()
    return ad.save_checkpoint(model, tmp_path_factory.mktemp("train_ckpt") / "train.pth"), model


@pytest.fixture
def train_ckpt(_training_checkpoint, tmp_path):
    """``(path, model)``: the training checkpoint copied to ``tmp_path / "train.pth"`` (tests write next to it,
    e.g. default output names) and a copy of the model it holds (tests may change theirs)."""
    source, model = _training_checkpoint
    path = tmp_path / "train.pth"
    shutil.copyfile(source, path)
    return path, copy.deepcopy(model)


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """acmix_resnet_tiny (5 classes, random weights and BatchNorm statistics) exported to ONNX at 3x32x32:
    the model the serving tests run."""
    import acmix_deploy as ad
    from acmix_deploy.exporters.onnx import export_onnx
    from acmix_deploy.testing import randomize_model

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 3).eval()
    path = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    export_onnx(ad.reparameterize_model(model), path, (3, 32, 32))
    return path
