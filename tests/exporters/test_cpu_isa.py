"""The CPU's instruction-set level (util.detect_cpu) and how ONNX export and benchmarks record it."""

from __future__ import annotations

import pytest

from acmix_deploy.errors import ConfigError
from acmix_deploy.util import CPU_ISAS, CpuInfo, cpu_isa_level, detect_cpu, resolve_cpu_isa


@pytest.mark.parametrize("flags,machine,level", [
    ("fpu sse4_2 avx avx2 fma avx512f avx512bw", "x86_64", "avx512"),
    ("fpu sse4_2 avx avx2 fma", "x86_64", "avx2"),
    ("fpu sse4_2 avx avx2", "x86_64", "generic"),  # AVX2 without FMA3: MLAS keeps its SSE/AVX kernels
    ("fpu sse4_2 avx", "x86_64", "generic"),
    ("fp asimd evtstrm sve", "aarch64", "generic"),
    ("avx2 fma avx512f", "aarch64", "generic"),  # flags of another architecture do not count
])
def test_isa_level_from_flags(flags, machine, level):
    assert cpu_isa_level(flags.split(), machine) == level


def test_detect_cpu_describes_this_machine():
    info = detect_cpu(threads=3)
    assert isinstance(info, CpuInfo) and info.isa in CPU_ISAS and info.threads == 3 and info.model
    assert set(info.flags) <= set(open("/proc/cpuinfo").read().split()) if info.flags else True
    assert info.as_dict()["flags"] == list(info.flags) and info.as_dict()["isa"] == info.isa


def test_resolve_cpu_isa():
    assert resolve_cpu_isa("auto") == detect_cpu().isa
    for level in CPU_ISAS:
        assert resolve_cpu_isa(level) == level
    with pytest.raises(ConfigError, match="avx512, avx2, generic"):
        resolve_cpu_isa("AVX512")


def test_benchmark_results_record_the_machine():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from common import machine

    m = machine(threads=2)
    assert m["cpu"]["isa"] in CPU_ISAS and m["cpu"]["threads"] == 2 and len(m["load_average"]) == 3
    assert "uptime" in m


def test_device_fingerprint_records_the_isa():
    from acmix_deploy.profiling import device_fingerprint

    fp = device_fingerprint("cpu", 2)
    assert fp["cpu_isa"] in CPU_ISAS and isinstance(fp["isa_flags"], list)


def test_export_options_take_a_cpu_isa(tmp_path):
    from acmix_deploy.exporters import FORMATS, ExportOptions, OptionNotApplicable, validate_options
    from acmix_deploy.exporters.driver import cpu_target_for, resolve_options

    assert "cpu_isa" in FORMATS["onnx"].accepted and "cpu_isa" in FORMATS["triton"].accepted
    with pytest.raises(OptionNotApplicable, match="cpu_isa"):  # an engine's graph is for the GPU
        validate_options("engine", ExportOptions(fmt="engine", cpu_isa="avx2"))
    assert cpu_target_for(ExportOptions(fmt="onnx", cpu_isa="avx2")) == "avx2"
    assert cpu_target_for(ExportOptions(fmt="onnx", cpu_isa="none")) is None  # the plain graph, asked for
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError, match="cpu_isa must be auto or one of"):
        resolve_options(ckpt, ExportOptions(fmt="onnx", cpu_isa="avx3"))
    with pytest.raises(ConfigError, match="compact groups"):
        resolve_options(ckpt, ExportOptions(fmt="onnx", cpu_isa="avx2", device="cuda"))


def test_cli_export_for_a_named_isa(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from typer.testing import CliRunner

    import acmix_deploy as ad
    from acmix_deploy.cli import app
    from acmix_deploy.testing import randomize_model

    ckpt = ad.save_checkpoint(randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=4), 0).eval(),
                              tmp_path / "t.pth")
    out = tmp_path / "avx2.onnx"
    res = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(out), "--cpu-isa", "avx2"])
    assert res.exit_code == 0, res.output
    assert "shaped for ONNX Runtime on avx2 CPUs" in res.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["acmix_deploy.cpu_isa"] == "avx2"
    assert meta["acmix_deploy.conv_path_groups"] in ("merged into 8-channel groups", "compact")
    res = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "x.onnx"), "--cpu-isa", "sse9"])
    assert res.exit_code == 2 and "sse9" in res.output and not (tmp_path / "x.onnx").exists()


def test_softmax_floor_follows_the_target(monkeypatch):
    import dataclasses

    from acmix_deploy.exporters import onnx as onnx_exporter

    assert onnx_exporter.softmax_floor_for(None) is None  # GPUs, TensorRT, plain exports
    for isa in ("avx512", "avx2", "generic"):  # a named CPU: the floor (its vendor is not known)
        assert onnx_exporter.softmax_floor_for(isa) == onnx_exporter.SOFTMAX_FLOOR_MARGIN
    here = detect_cpu()
    for vendor, floor in (("AuthenticAMD", None), ("GenuineIntel", onnx_exporter.SOFTMAX_FLOOR_MARGIN)):
        monkeypatch.setattr(onnx_exporter, "detect_cpu", lambda v=vendor: dataclasses.replace(here, vendor=v))
        assert onnx_exporter.softmax_floor_for("auto") == floor
