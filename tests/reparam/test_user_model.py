"""Users' own networks (tests/user_nets.py): recognition, probe, graph BatchNorm folding, leftovers, CLI, files.

Tolerances: the whole detector in float32 against its training form: relative error (max|a-b| / max|a|, per
output) <= 1e-5; what is observed is ~5e-7 (float32 rounding through ~25 layers, the fold itself is exact
algebra computed in float64).  float16 / bfloat16 deploy forms against the float32 training form: 5e-3 and
3e-2 (one rounding of every weight and activation to 11 / 8 significant bits; observed ~1e-3 and ~9e-3).
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.foreign import PROBE_TOL, acmix_structure, adopt
from acmix_deploy.graph_fold import find_bn_pairs
from acmix_deploy.modules import ACmix, ACmixDeploy, WindowAttentionACmixFolded
from acmix_deploy.outputs import flatten_outputs
from acmix_deploy.reparam import reparameterize
from acmix_deploy.testing import randomize_model

from tests import user_nets
from tests.helpers import NETS, randomize, rel_error

SIZE = (128, 160)  # non-square; the /32 map (4x5) is just above kernel_att 7's reflection padding
runner = CliRunner()


@pytest.fixture(scope="module")
def yolo() -> nn.Module:
    return randomize(user_nets.yolo_acmix())


@pytest.fixture(scope="module")
def folded(yolo):
    return reparameterize(yolo)


# ------------------------------------------------------------------------------------------------- recognition

@pytest.mark.parametrize("make, expected", [
    (lambda: user_nets.OfficialACmix(16, 32, 7, 4, 3, 2), dict(in_planes=16, out_planes=32, kernel_att=7, head=4,
                                                                 kernel_conv=3, stride=2)),
    (lambda: user_nets.SameWidthACmix(24, 5, 2), dict(in_planes=24, out_planes=24, kernel_att=5, head=2,
                                                       kernel_conv=3, stride=1)),
])
def test_structure_gives_the_hyperparameters(make, expected):
    hp, why = acmix_structure(make())
    assert why == ""
    assert {k: hp[k] for k in expected} == expected


def test_structure_refuses_other_modules_with_a_reason():
    m = user_nets.OfficialACmix(16, 16, 7, 4)
    del m.rate2
    assert acmix_structure(m) == (None, "no one-element parameters rate1/rate2")
    m = user_nets.OfficialACmix(16, 16, 7, 4)
    m.kernel_att = 5  # attribute disagrees with the unfold
    assert "disagrees" in acmix_structure(m)[1]
    m = user_nets.OfficialACmix(16, 16, 7, 4)
    m.extra = nn.Conv2d(16, 16, 1)
    assert "holds state" in acmix_structure(m)[1]
    assert acmix_structure(ACmix(16, 16, 7, 4))[0] is None  # ours is not foreign
    assert acmix_structure(nn.Conv2d(3, 3, 1))[0] is None


@pytest.mark.parametrize("stride", [1, 2])
def test_adopted_copy_equals_the_official_forward(stride):
    theirs = randomize(user_nets.OfficialACmix(12, 16, 5, 4, 3, stride), seed=stride)
    ours, record = adopt(theirs, "blk")
    assert isinstance(ours, ACmix) and record.accepted and record.probe_rel <= PROBE_TOL
    for b, size in ((1, (10, 14)), (3, (16, 12))):
        x = torch.randn(b, 12, *size)
        with torch.no_grad():
            assert rel_error(theirs(x), ours(x)) < 1e-6


def test_dtype_casting_copy_adopted_in_its_dtype():
    theirs = randomize(user_nets.SameWidthACmix(16, 3, 4)).half()
    ours, record = adopt(theirs, "attn")
    assert record.accepted and ours.conv1.weight.dtype == torch.float16


def test_lookalike_is_reported_and_left_alone():
    net = randomize(user_nets.WithLookAlike())
    with pytest.warns(UserWarning, match="left unfolded"):
        deploy = ad.reparameterize_model(net)
    assert isinstance(deploy.odd, user_nets.ZeroPadLookAlike)  # never replaced
    assert isinstance(deploy.good, ACmixDeploy)
    _, report = reparameterize(net)
    (rejected,) = report.rejected
    assert rejected.path == "odd" and rejected.probe_rel > 1e-2 and "differs from the official ACmix" in rejected.reason
    left = {x.path: x.reason for x in report.leftovers}
    assert set(left) == {"odd", "bn"} and "differs" in left["odd"] and "cannot absorb" in left["bn"]
    assert not ad.is_deploy(deploy)
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        assert rel_error(net(x), deploy(x)) < 1e-5


def test_swin_form_copies_adopted_at_any_size_with_the_callers_mask():
    net = randomize(user_nets.user_swin(), seed=4)
    deploy, report = reparameterize(net)
    assert sorted(a.path for a in report.adopted) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(isinstance(b.attn, WindowAttentionACmixFolded) for b in deploy.blocks)
    assert report.pairs == [("embed", "embed_bn")] and report.leftovers == [] and ad.is_deploy(deploy)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 48)
        with torch.no_grad():
            assert rel_error(net(x), deploy(x)) < 1e-5
    # the folded attention at another resolution, called in the official convention (x, H, W, mask)
    theirs, ours = net.blocks[1].attn, deploy.blocks[1].attn
    x = torch.randn(2, 12, 8, 32)
    mask = torch.where(torch.rand(6, 16, 16) < 0.4, -100.0, 0.0)
    with torch.no_grad():
        assert rel_error(theirs(x, 12, 8, mask), ours(x, 12, 8, mask)) < 1e-5
        assert rel_error(theirs(x, 12, 8), ours(x, 12, 8)) < 1e-5


def test_swin_lookalike_that_drops_the_mask_is_left_alone():
    net = randomize(user_nets.user_swin(mask_ignoring=True), seed=5)
    _, report = reparameterize(net)
    assert report.adopted == [] and len(report.rejected) == 2
    assert all("differs from the official window attention" in r.reason for r in report.rejected)
    assert {x.path for x in report.leftovers} == {"blocks.0.attn", "blocks.1.attn"}


def test_copy_that_differs_only_at_other_input_scales_is_left_alone():
    """A clamp against float16 overflow: equal to ACmix on the unit-normal probe, not on larger inputs."""
    from acmix_deploy.foreign import probe_input

    theirs = randomize(user_nets.ClampedACmix(16, 16, 5, 4), seed=3)
    hp = acmix_structure(theirs)[0]
    official = randomize(user_nets.OfficialACmix(16, 16, 5, 4), seed=3)
    x = probe_input(hp)
    with torch.no_grad():
        assert rel_error(official(x), theirs(x)) == 0.0  # the unit-scale probe alone would have taken it
    ours, record = adopt(theirs, "att")
    assert ours is None and not record.accepted and record.probe_rel > 1e-2
    assert "at 10 x the probe + 3, float64" in record.reason
    # the same copy in a network: reported, not folded, and the network left exactly as it was
    net = nn.Sequential(user_nets.Conv(3, 16, 3, 1), theirs, nn.Conv2d(16, 4, 1))
    deploy, report = reparameterize(net)
    assert report.adopted == [] and isinstance(deploy[1], user_nets.ClampedACmix)
    assert any(x.path == "1" and "differs from the official ACmix" in x.reason for x in report.leftovers)


def test_adoption_probes_in_float64_with_the_official_positional_grid():
    """The official class builds its grid with torch.linspace in the default dtype: probed in float64 all the same."""
    _, record = adopt(randomize(user_nets.OfficialACmix(8, 16, 3, 2, 3, 2), seed=6), "att")
    assert record.accepted and record.notes == [] and record.probe_rel < 1e-6
    assert "3 probes" in record.describe()


def test_float64_check_runs_networks_with_the_official_class(yolo):
    """The float64 re-check (taken when float32 misses tol) runs the official ACmix: its float32 grid used to meet
    float64 weights and fail as if the input size were wrong."""
    deploy, _ = reparameterize(yolo)
    diff = ad.check_equivalence(yolo, deploy, (3, *SIZE), tol=1e-12, fold=lambda m: reparameterize(m)[0])
    assert diff.rel > 1e-12 and diff.rel_float64 is not None and diff.rel_float64 < 1e-12
    assert torch.get_default_dtype() == torch.float32  # restored


def test_copy_with_renamed_parts_is_reported_not_passed_over():
    from acmix_deploy.foreign import acmix_resemblance

    net = randomize(user_nets.renamed_parts_net(), seed=2)
    assert acmix_resemblance(net[1]) == "no nn.Conv2d conv1, conv2, conv3"
    with pytest.warns(UserWarning, match=r"1 \(RenamedPartsACmix\) resembles the official ACmix but was not recognised"):
        deploy = ad.reparameterize_model(net)
    _, report = reparameterize(net)
    assert report.leftovers == [] and len(report.unrecognised) == 1  # a note, not a leftover: the fold goes on
    assert "(no nn.Conv2d conv1, conv2, conv3); left as it is, unfolded" in report.unrecognised[0]
    assert isinstance(deploy[1], user_nets.RenamedPartsACmix)
    with torch.no_grad():
        x = torch.randn(2, 3, 20, 24)
        assert rel_error(net(x), deploy(x)) < 1e-5  # left as it is, still the same function
    # neither containers named after ACmix nor the official class itself nor plain layers "resemble" it
    container = type("C2f_ACmix", (nn.Module,), {})()
    container.inner = user_nets.OfficialACmix(8, 8, 3, 2)
    for m in (container, container.inner, ACmix(8, 8, 3, 2), nn.Conv2d(3, 3, 1), user_nets.Conv(3, 8, 3, 1)):
        assert acmix_resemblance(m) is None
    # a reflection-padded depthwise block with two scalar weights (a dehazing block, say) is no ACmix
    dehaze = nn.Module()
    dehaze.pad, dehaze.dw = nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3, groups=8)
    dehaze.alpha, dehaze.beta = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
    assert acmix_resemblance(dehaze) is None


def test_cli_renamed_copy_is_named_in_the_output_and_the_file(tmp_path):
    net = randomize(user_nets.renamed_parts_net(), seed=2)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    res = runner.invoke(app, ["reparam", str(tmp_path / "w.pth"), "--model-def", f"{NETS}:renamed_parts_net",
                              "--imgsz", "24", "-o", str(tmp_path / "d.pth")])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "not recognised: 1 (RenamedPartsACmix) resembles the official ACmix" in text
    assert "no nn.Conv2d conv1, conv2, conv3" in text
    meta = torch.load(tmp_path / "d.pth", weights_only=True)["meta"]
    assert len(meta["not_recognised"]) == 1


def test_copy_under_two_names_becomes_one_deploy_module():
    net = randomize(user_nets.TwoNames(), seed=1)
    deploy, report = reparameterize(net)
    assert [a.path for a in report.adopted] == ["att"] and report.leftovers == []
    assert isinstance(deploy.att, ACmixDeploy) and deploy.att2 is deploy.att and ad.is_deploy(deploy)
    for b in (1, 3):
        x = torch.randn(b, 3, 24, 20)
        with torch.no_grad():
            assert rel_error(net(x), deploy(x)) < 1e-5


def test_input_channels_from_the_first_convolution_run():
    from acmix_deploy.user_model import model_channels

    net = user_nets.StemDefinedLast()
    assert next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels == 16  # the module-order rule
    net.stem.bn.eval()  # a frozen BatchNorm in a model in training mode
    assert model_channels(net, (32, 32)) == 3
    assert net.training and not net.stem.bn.training  # every module's mode as it was
    assert model_channels(user_nets.yolo_acmix()) == 3

    class Swallows(nn.Module):  # a forward that catches Exception must not hide the probe's stop
        def __init__(self):
            super().__init__()
            self.conv, self.calls = nn.Conv2d(1, 4, 3), 0

        def forward(self, x):
            self.calls += 1
            try:
                return self.conv(x)
            except Exception:
                return x

    m = Swallows()
    assert model_channels(m, (8, 8)) == 1 and m.calls == 1


def test_state_dict_missing_num_batches_tracked_keeps_its_metadata(tmp_path):
    """torch fills a missing num_batches_tracked only for state dicts of BatchNorm's first version; a trimmed
    ``state_dict()`` (version 2 in its metadata) loads all the same."""
    from acmix_deploy.user_model import load_strict

    net = randomize(user_nets.StemDefinedLast(), seed=5)
    sd = net.state_dict()
    del sd["stem.bn.num_batches_tracked"]
    assert sd._metadata["stem.bn"]["version"] == 2
    torch.save(sd, tmp_path / "w.pth")
    fresh = user_nets.StemDefinedLast()
    load_strict(fresh, torch.load(tmp_path / "w.pth", weights_only=True), "w.pth", "StemDefinedLast")
    assert torch.equal(fresh.stem.bn.running_var, net.stem.bn.running_var)


def test_cli_stem_defined_last_and_weights_without_num_batches_tracked(tmp_path):
    net = randomize(user_nets.StemDefinedLast(), seed=4)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "w.pth")
    res = runner.invoke(app, ["reparam", str(tmp_path / "w.pth"), "--model-def", f"{NETS}:StemDefinedLast",
                              "--imgsz", "32", "-o", str(tmp_path / "d.pth")])
    assert res.exit_code == 0, res.output
    loaded = ad.read_checkpoint(tmp_path / "d.pth")
    assert tuple(loaded.model.default_cfg["input_size"]) == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(net(x), loaded.model(x)) < 1e-5


def test_copies_that_run_in_float32_only_are_probed_at_scale_in_float32():
    """Code that cannot run in float64 (a hard-coded float32 grid): the scaled probes run in float32 instead of
    being skipped, so a clamp is still caught there, and the genuine copy is still adopted."""
    _, clamped = adopt(randomize(user_nets.Float32GridClamped(16, 16, 5, 4), seed=3), "att")
    assert not clamped.accepted and "at 10 x the probe + 3, float32" in clamped.reason
    ours, genuine = adopt(randomize(user_nets.Float32GridACmix(16, 16, 5, 4), seed=3), "att")
    assert genuine.accepted and genuine.notes == ["scaled probes in float32 (float64: RuntimeError)"]
    assert "scaled probes in float32" in genuine.describe()


def test_float64_check_that_cannot_run_says_why_not_the_input_size(tmp_path):
    net = nn.Sequential(user_nets.Conv(3, 16, 3, 1), user_nets.Float32GridACmix(16, 16, 5, 4))
    net = randomize(net, seed=1)
    deploy, _ = reparameterize(net)
    diff = ad.check_equivalence(net, deploy, (3, 20, 24), tol=1e-12, fold=lambda m: reparameterize(m)[0])
    assert diff.rel_float64 is None and "Input type" in diff.float64_error
    assert "the float64 re-check could not run" in diff.summary() and "Choose an input size" not in diff.summary()


def test_pair_under_two_paths_is_folded_once():
    net = randomize(user_nets.SharedChildren(), seed=2)
    deploy, report = reparameterize(net)
    assert report.leftovers == [] and ad.is_deploy(deploy)
    assert deploy.features[0] is deploy.backbone[0] and isinstance(deploy.features[1], nn.Identity)
    for size in (32, 72):  # both branches of the root's forward
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert rel_error(net(x), deploy(x)) < 1e-5


def test_cli_channels_found_at_the_given_size(tmp_path):
    net = randomize(user_nets.PatchStemAfterACmix(), seed=4)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    res = runner.invoke(app, ["reparam", str(tmp_path / "w.pth"), "--model-def", f"{NETS}:PatchStemAfterACmix",
                              "--imgsz", "32", "-o", str(tmp_path / "d.pth")])
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "d.pth", weights_only=True)["input_size"] == [3, 32, 32]


def test_factory_that_exits_is_a_clear_error(tmp_path):
    (tmp_path / "exits.py").write_text("import sys\n\ndef build():\n    sys.exit(3)\n")
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    res = runner.invoke(app, ["reparam", str(tmp_path / "w.pth"), "--model-def", f"{tmp_path / 'exits.py'}:build"])
    assert res.exit_code == 2 and "build(**{}) called sys.exit(3)" in " ".join(res.output.split())


# ------------------------------------------------------------------------------------- the fold of a detector

def test_leftovers_see_foreign_operators(yolo):
    left = ad.foldable_leftovers(yolo)
    assert any(name.startswith("down2 (OfficialACmix") for name in left)
    assert any(name.startswith("stem.bn (BatchNorm2d") for name in left)
    assert not ad.is_deploy(yolo)


def test_detector_folds_completely(folded):
    deploy, report = folded
    assert sorted(a.path for a in report.adopted) == ["attn", "down2", "neck16.acmix", "neck32.0"]
    assert report.leftovers == [] and ad.is_deploy(deploy)
    assert ("neck16.acmix", "neck16.bn") in report.pairs  # ACmix -> BN as attributes of a user block
    assert ("neck32.0", "neck32.1") in report.pairs  # ACmix -> BN in an nn.Sequential
    assert ("detect.cv.0.0.conv", "detect.cv.0.0.bn") in report.pairs  # inside a head that does not trace
    assert any("detect (Detect) does not trace" in n for n in report.notes)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert isinstance(deploy.neck16.acmix, ACmixDeploy) and isinstance(deploy.neck16.bn, nn.Identity)


@pytest.mark.parametrize("batch", [1, 3])
def test_detector_deploy_equals_training_form(yolo, folded, batch):
    deploy, _ = folded
    x = torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref, out = flatten_outputs(yolo(x)), flatten_outputs(deploy(x))
    assert [r.shape for r in ref] == [o.shape for o in out] and len(ref) == 3
    for r, o in zip(ref, out):
        assert rel_error(r, o) < 1e-5


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_detector_deploy_in_half_precision(yolo, folded, dtype, tol):
    deploy = copy.deepcopy(folded[0]).to(dtype)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref, out = flatten_outputs(yolo(x)), flatten_outputs(deploy(x.to(dtype)))
    for r, o in zip(ref, out):
        assert o.dtype == dtype and rel_error(r, o.float()) < tol


def test_framework_attributes_survive_replacement():
    net = randomize(user_nets.WithLookAlike())
    net.good.i, net.good.f = 7, -1  # what Ultralytics' parse_model hangs on every layer
    deploy, _ = reparameterize(net)
    assert isinstance(deploy.good, ACmixDeploy) and (deploy.good.i, deploy.good.f) == (7, -1)


class _SharedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv's output is read twice: folding would change the second read


def test_batchnorm_whose_input_is_used_elsewhere_is_left():
    net = randomize(_SharedOutput())
    found = find_bn_pairs(net)
    assert found.pairs == [] and "also used elsewhere" in found.skipped["bn"]
    with pytest.warns(UserWarning):
        deploy = ad.reparameterize_model(net)
    assert isinstance(deploy.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 7, 5)
    with torch.no_grad():
        assert torch.equal(net(x), deploy(x))


def test_registry_models_fold_through_the_graph():
    """ResNet blocks hold no folding code: every BatchNorm is found after its producer in the traced graph."""
    model = randomize_model(ad.create_model("acmix_resnet_tiny")).eval()
    deploy, report = reparameterize(model)
    assert report.adopted == [] and report.leftovers == [] and ad.is_deploy(deploy)
    assert {("conv1", "bn1"), ("layer1.0.conv2", "layer1.0.bn2"), ("layer2.0.downsample.0", "layer2.0.downsample.1")
            } <= set(report.pairs)
    assert len(report.pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# ------------------------------------------------------------------------------------------------------- files

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, yolo):
    d = tmp_path_factory.mktemp("user_model")
    shutil.copy(NETS, d / "user_nets.py")
    torch.save({"model": yolo.state_dict(), "epoch": 3}, d / "weights.pth")
    return d


@pytest.fixture(scope="module")
def deploy_ckpt(workdir):
    out = workdir / "weights.deploy.pth"
    res = runner.invoke(app, ["reparam", str(workdir / "weights.pth"), "--model-def",
                              f"{workdir / 'user_nets.py'}:yolo_acmix", "--imgsz", "128", "160", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_cli_reparam_model_def(deploy_ckpt, workdir):
    out, text = deploy_ckpt
    assert "adopted down2 (OfficialACmix)" in text and "output output2" in text
    obj = torch.load(out, weights_only=True)
    rec = obj["model_def"]
    assert obj["format_version"] == 2 and obj["input_size"] == [3, 128, 160]
    assert rec["factory"] == "yolo_acmix" and rec["path"] == str((workdir / "user_nets.py").resolve())
    assert rec["sha256"] == hashlib.sha256((workdir / "user_nets.py").read_bytes()).hexdigest()
    assert sorted(obj["fold_plan"]["adopted"]) == ["attn", "down2", "neck16.acmix", "neck32.0"]


def test_user_checkpoint_rebuilds_the_deploy_model(deploy_ckpt, yolo):
    loaded = ad.read_checkpoint(deploy_ckpt[0])
    assert loaded.deploy and loaded.arch == "user:yolo_acmix" and ad.is_deploy(loaded.model)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        for r, o in zip(flatten_outputs(yolo(x)), flatten_outputs(loaded.model(x))):
            assert rel_error(r, o) < 1e-5


def test_moved_and_changed_definition(deploy_ckpt, workdir, tmp_path):
    moved = tmp_path / "elsewhere.pth"
    shutil.copy(deploy_ckpt[0], moved)
    src = workdir / "user_nets.py"
    backup = src.read_bytes()
    try:
        src.rename(workdir / "gone.py")
        with pytest.raises(ad.CheckpointError, match="no longer exists.*model_def"):
            ad.read_checkpoint(moved)
        loaded = ad.read_checkpoint(moved, model_def=f"{workdir / 'gone.py'}:yolo_acmix")
        assert ad.is_deploy(loaded.model)
        (workdir / "gone.py").rename(src)
        src.write_bytes(backup + b"\n# edited\n")
        with pytest.warns(UserWarning, match="changed since"):
            ad.read_checkpoint(moved)
    finally:
        if (workdir / "gone.py").exists():
            (workdir / "gone.py").rename(src)
        src.write_bytes(backup)


def test_cli_model_def_errors(workdir, tmp_path):
    bad = tmp_path / "partial.pth"
    sd = torch.load(workdir / "weights.pth", weights_only=True)["model"]
    sd.pop("stem.bn.running_mean")
    torch.save(sd, bad)
    res = runner.invoke(app, ["reparam", str(bad), "--model-def", f"{workdir / 'user_nets.py'}:yolo_acmix"])
    assert res.exit_code == 2 and "1 missing: stem.bn.running_mean" in res.output
    res = runner.invoke(app, ["reparam", str(bad), "--model-def", f"{workdir / 'nope.py'}:yolo_acmix"])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["reparam", str(bad), "--model-def", f"{workdir / 'user_nets.py'}:missing"])
    assert res.exit_code == 2 and "no callable 'missing'" in res.output
    res = runner.invoke(app, ["reparam", str(bad), "--model-def", f"{workdir / 'user_nets.py'}:yolo_acmix",
                              "--model-args", "{nc: 3}"])
    assert res.exit_code == 2 and "not valid JSON" in res.output


def test_cli_allow_partial(tmp_path):
    net = randomize(user_nets.WithLookAlike())
    torch.save(net.state_dict(), tmp_path / "w.pth")
    args = ["reparam", str(tmp_path / "w.pth"), "--model-def", f"{NETS}:WithLookAlike", "--imgsz", "12"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "nothing written" in res.output and not (tmp_path / "w.deploy.pth").exists()
    res = runner.invoke(app, args + ["--allow-partial"])
    assert res.exit_code == 0, res.output
    obj = torch.load(tmp_path / "w.deploy.pth", weights_only=True)
    assert any("odd" in x for x in obj["meta"]["not_folded"])
    # the look-alike keeps the official unfold forward, whose graph onnxslim changes: exported as traced instead
    res = runner.invoke(app, ["export", str(tmp_path / "w.deploy.pth"), "-o", str(tmp_path / "w.onnx")])
    assert res.exit_code == 0, res.output
    assert "written without simplification" in " ".join(res.output.split())


# ------------------------------------------------------------------------------------------ pickled full models

class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_refused_without_trust_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Evil(str(marker))}, f, protocol=2)
    res = runner.invoke(app, ["reparam", str(tmp_path / "evil.pt")])
    assert res.exit_code == 2 and "--trust-pickle" in res.output and "run code" in res.output
    assert not marker.exists()
    res = runner.invoke(app, ["info", str(tmp_path / "evil.pt")])
    assert res.exit_code == 2 and not marker.exists()


def test_trust_pickle_round_trip_keeps_the_container(tmp_path, yolo):
    sys.modules.setdefault("user_nets", user_nets)  # the class path the pickle records, as a fork's would be
    model = copy.deepcopy(yolo)
    model.__class__.__module__ = "user_nets"
    ckpt = {"model": copy.deepcopy(model).half(), "ema": copy.deepcopy(model).half(), "updates": 12, "epoch": 3,
            "optimizer": None, "train_args": {"imgsz": 128, "data": "coco8.yaml"}, "date": "2026-11-30"}
    try:
        torch.save(ckpt, tmp_path / "best.pt")
        res = runner.invoke(app, ["reparam", str(tmp_path / "best.pt"), "--trust-pickle", "--code-path",
                                  str(Path(NETS).parent), "--imgsz", "128", "160"])
        assert res.exit_code == 0, res.output
        out = torch.load(tmp_path / "best.deploy.pt", weights_only=False)
    finally:
        model.__class__.__module__ = user_nets.__name__
    for key in ("updates", "epoch", "optimizer", "train_args", "date"):
        assert out[key] == ckpt[key]
    assert out["acmix_deploy"]["source_sha256"]
    x = torch.randn(2, 3, *SIZE)
    for key in ("model", "ema"):
        m = out[key]
        assert ad.is_deploy(m) and next(m.parameters()).dtype == torch.float16
        with torch.no_grad():
            for r, o in zip(flatten_outputs(yolo(x)), flatten_outputs(m.float()(x))):
                assert rel_error(r, o) < 5e-3  # the weights are stored in float16, as they came


def _badly_conditioned_net() -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN whose first convolution adds 3e4 that its BatchNorm removes again: in float32 the
    training form loses ~1e-3 of its signal to that cancellation; the folded convolution never forms the 3e4."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2),
                        nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        net[0].bias.fill_(3e4)
        net[1].running_mean.fill_(3e4)
        net[1].running_var.uniform_(0.5, 2)
        net[4].running_mean.uniform_(-1, 1)
        net[4].running_var.uniform_(0.5, 2)
    return net


def test_trust_pickle_check_judges_in_float64_where_float32_rounding_exceeds_tol(tmp_path):
    """The pickled path judges as the state-dict path does: float32 above tol, float64 exact, deploy no worse."""
    from acmix_deploy.user_model import fold_pickled

    obj = {"model": _badly_conditioned_net(), "epoch": 1}
    _, folds = fold_pickled(obj, 20, tol=1e-5)
    diff = folds[0].diff
    assert diff.rel > 1e-4  # the training form's own float32 rounding (observed 8e-4)
    assert diff.rel_float64 < 1e-10 and diff.within(1e-5)  # the algebra (observed 1.6e-12)
    assert diff.rounding_float32[1] < 1e-6 < diff.rounding_float32[0]  # the folded form is the accurate one
    _, folds = fold_pickled(obj, 20, tol=None)
    assert folds[0].diff.rel_float64 is None and not folds[0].diff.within(1e-5)  # float32 alone would refuse it

    torch.save(obj, tmp_path / "last.pt")
    res = runner.invoke(app, ["reparam", str(tmp_path / "last.pt"), "--trust-pickle", "--imgsz", "20"])
    assert res.exit_code == 0, res.output
    assert "float64" in res.output and "own float32 rounding" in " ".join(res.output.split())
    out = torch.load(tmp_path / "last.deploy.pt", weights_only=False)
    assert out["epoch"] == 1 and ad.is_deploy(out["model"])


def test_trust_pickle_check_still_refuses_a_wrong_fold(tmp_path, monkeypatch):
    import acmix_deploy.user_model as um

    def off_by_a_little(model, inplace=False, plan=None):
        deploy, report = reparameterize(model, inplace=inplace, plan=plan)
        with torch.no_grad():
            deploy[3].bias.add_(1e-2)  # a fold error far above the tolerance, in float32 and float64 alike
        return deploy, report

    monkeypatch.setattr(um, "reparameterize", off_by_a_little)
    torch.save({"model": _badly_conditioned_net()}, tmp_path / "last.pt")
    res = runner.invoke(app, ["reparam", str(tmp_path / "last.pt"), "--trust-pickle", "--imgsz", "20"])
    assert res.exit_code == 1 and "check failed" in res.output and "in float64" in res.output
    assert not (tmp_path / "last.deploy.pt").exists()


# --------------------------------------------------------------------------------------------- deployment

def test_export_three_outputs_checked_in_onnxruntime(deploy_ckpt, yolo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "det.onnx"
    res = runner.invoke(app, ["export", str(deploy_ckpt[0]), "-o", str(onnx_path)])
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["output0", "output1", "output2"]
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, *SIZE)).astype(np.float32)
        got = sess.run(None, {sess.get_inputs()[0].name: x})
        with torch.no_grad():
            ref = flatten_outputs(yolo(torch.from_numpy(x)))
        for r, o in zip(ref, got):
            assert rel_error(r, torch.from_numpy(o)) < 1e-5


def test_export_dynamic_hw_takes_every_letterbox_size(deploy_ckpt, yolo, tmp_path):
    """The detector users export for several sizes (issue 18): one --dynamic-hw graph of their own network
    (pasted ACmix copies, three outputs at /8, /16, /32), exact at non-square letterbox sizes and batches,
    also through a runner with per-size sessions."""
    ort = pytest.importorskip("onnxruntime")
    from acmix_deploy.runtime import OrtRunner

    onnx_path = tmp_path / "det_dyn.onnx"
    res = runner.invoke(app, ["export", str(deploy_ckpt[0]), "-o", str(onnx_path), "--dynamic-hw"])
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    per_size = OrtRunner(onnx_path, specialize=2)
    for batch, h, w in [(1, 128, 160), (3, 160, 128), (1, 192, 256)]:
        x = np.random.default_rng(batch + h).standard_normal((batch, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = flatten_outputs(yolo(torch.from_numpy(x)))
        for outs in (sess.run(None, {"images": x}), per_size.infer_outputs(x)):
            assert [o.shape for o in outs] == [tuple(r.shape) for r in ref], (h, w)
            for r, o in zip(ref, outs):
                assert rel_error(r, torch.from_numpy(o)) < 1e-5, (batch, h, w)
    assert per_size.specialized_sizes == [(128, 160), (160, 128)]  # the third size: full, requested once


def test_cli_swin_backbone_round_trip(tmp_path):
    net = randomize(user_nets.user_swin(), seed=6)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "swin.pth")
    res = runner.invoke(app, ["reparam", str(tmp_path / "swin.pth"), "--model-def", f"{NETS}:user_swin",
                              "--imgsz", "32", "48"])
    assert res.exit_code == 0, res.output
    assert "-> WindowAttentionACmixFolded" in res.output
    model = ad.load_checkpoint(tmp_path / "swin.deploy.pth")
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert rel_error(net(x), model(x)) < 1e-5


def test_folded_detector_exports_through_a_plain_torch_onnx_export(folded, yolo, tmp_path):
    """What the users' own exporters (``yolo export``) call: torch.onnx.export on the module tree."""
    ort = pytest.importorskip("onnxruntime")
    deploy, _ = folded
    x = torch.randn(1, 3, *SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(deploy, (x,), tmp_path / "plain.onnx", dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["a", "b", "c"])
    sess = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        for r, o in zip(flatten_outputs(yolo(x)), got):
            assert rel_error(r, torch.from_numpy(o)) < 1e-5


def test_cli_size_the_network_cannot_take_is_a_clear_error(workdir):
    res = runner.invoke(app, ["reparam", str(workdir / "weights.pth"), "--model-def",
                              f"{workdir / 'user_nets.py'}:yolo_acmix", "--imgsz", "64", "96", "--no-check"])
    assert res.exit_code == 2 and "cannot run on an input of shape (1, 3, 64, 96)" in res.output
    assert "--imgsz" in res.output and "Traceback" not in res.output


def test_cli_commands_take_the_model_definition(workdir, tmp_path):
    """compare / export on the user's bare weights with --model-def, no reparam first; --imgsz H W."""
    res = runner.invoke(app, ["compare", str(workdir / "weights.pth"), "--model-def",
                              f"{workdir / 'user_nets.py'}:yolo_acmix", "--imgsz", "128", "160", "--batch", "1"])
    assert res.exit_code == 0, res.output
    assert "output2" in res.output and "torch:deploy" in res.output
    res = runner.invoke(app, ["export", str(workdir / "weights.pth"), "--model-def",
                              f"{workdir / 'user_nets.py'}:yolo_acmix", "--imgsz", "128", "160",
                              "-o", str(tmp_path / "bare.onnx")])
    assert res.exit_code == 0, res.output
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(tmp_path / "bare.onnx")
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 160] and len(proto.graph.output) == 3
