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
def _training_checkpoints(tmp_path_factory):
    """Training checkpoints built and saved once per session: ``get(num_classes, seed) -> (path, model)``,
    acmix_resnet_tiny with random weights and BatchNorm statistics (``randomize_model(model, seed)``)."""
    import acmix_deploy as ad
    from acmix_deploy.testing import randomize_model

    built = {}

    def get(num_classes: int, seed: int):
        if (num_classes, seed) not in built:
            model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=num_classes), seed).eval()
            path = ad.save_checkpoint(model, tmp_path_factory.mktemp("train_ckpt") / "train.pth")
            built[num_classes, seed] = path, model
        return built[num_classes, seed]

    return get


@pytest.fixture
def train_ckpt_args():
    """What ``train_ckpt`` holds: 4 classes, seed 2.  A test module whose assertions need another model
    overrides this fixture (test_export's checkpoint has 6 classes)."""
    return {"num_classes": 4, "seed": 2}


@pytest.fixture
def train_ckpt(_training_checkpoints, train_ckpt_args, tmp_path):
    """``(path, model)``: a training checkpoint copied to ``tmp_path / "train.pth"`` (tests write next to it,
    e.g. default output names) and a copy of the model it holds (tests may change theirs)."""
    source, model = _training_checkpoints(**train_ckpt_args)
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
