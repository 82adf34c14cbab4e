"""Library errors name parameters; the command line names flags.

A library message writes each parameter it refers to as a field (``{max_batch}``) and lists it in ``params``:
``str(exc)`` reads ``max_batch``, and the CLI prints ``exc.spell(flag)``, ``--max-batch``.  The tests below
check both renderings on a table of failing calls, the CLI's output on a few commands, that every parameter a
message names is spelled as an option the CLI really has, and that no library error spells a flag itself.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

import acmix_deploy
from acmix_deploy.cli import app
from acmix_deploy.cli._common import flag
from acmix_deploy.errors import AcmixDeployError
from acmix_deploy.exporters import ExportOptions, validate_options
from acmix_deploy.exporters.driver import resolve_options
from acmix_deploy.exporters.tensorrt import BatchProfile, engine_profiles, parse_shape, shape_profile
from acmix_deploy.exporters.triton_repository import export_triton_repository

PACKAGE = Path(acmix_deploy.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")
runner = CliRunner()


def _serve_settings(**kw):
    from acmix_deploy.serving.app import ServeSettings

    ServeSettings(name="m", **kw).validate()


# (call, what str(exc) says, what the CLI prints for the same error)
CASES = [
    (lambda: resolve_options(Path("m.pth"), ExportOptions(fp16=True, int8=True)),
     "choose one of fp16 and int8", "choose one of --fp16 and --int8"),
    (lambda: resolve_options(Path("m.pth"), ExportOptions(int8=True)),
     "int8 needs calibration data: calib digits", "--int8 needs calibration data: --calib digits"),
    (lambda: resolve_options(Path("m.pth"), ExportOptions(dynamic_hw=True, dynamic=False)),
     "dynamic_hw makes batch, height and width dynamic; it cannot be combined with dynamic=False",
     "--dynamic-hw makes batch, height and width dynamic; it cannot be combined with --static"),
    (lambda: resolve_options(Path("m.pth"), ExportOptions(fmt="aoti", max_batch=4, batch=8)),
     "batch 8 must lie in 1..max_batch (4)", "--batch 8 must lie in 1..--max-batch (4)"),
    (lambda: resolve_options(Path("m.pth"), ExportOptions(fmt="engine", min_shape="2x3x8x8", min_batch=1)),
     "min_shape says batch 2 and min_batch says 1", "--min-shape says batch 2 and --min-batch says 1"),
    (lambda: resolve_options(Path("m.pth"), ExportOptions(fmt="engine", workspace_gb=0)),
     "workspace_gb must be positive (GiB)", "--workspace must be positive (GiB)"),
    (lambda: resolve_options(Path("m.pth"), ExportOptions(fmt="aoti", dynamic_hw=True)),
     "one package per input size (imgsz), or an ONNX graph (fmt='onnx') with dynamic_hw",
     "one package per input size (--imgsz), or an ONNX graph (--format onnx) with --dynamic-hw"),
    (lambda: engine_profiles(2, False, min_batch=1),
     "dynamic=False builds for exactly batch 2; drop min_batch or use dynamic=True",
     "--static builds for exactly --batch 2; drop --min-batch or use --dynamic"),
    (lambda: parse_shape("1x3x224", "opt_shape"), "opt_shape must be NxCxHxW", "--opt-shape must be NxCxHxW"),
    (lambda: shape_profile(BatchProfile(1, 1, 8), (3, 32, 32), "1x3x16x16", dynamic_hw=True),
     "dynamic_hw engines need the spatial range: give min_shape and max_shape",
     "--dynamic-hw engines need the spatial range: give --min-shape and --max-shape"),
    (lambda: validate_options("triton", ExportOptions(fmt="triton", dynamic=False, workspace_gb=2.0)),
     "dynamic, workspace_gb do not apply to fmt='triton' (dynamic applies to fmt='onnx', fmt='aoti', fmt='engine'",
     "--static, --workspace do not apply to --format triton (--static applies to --format onnx, --format aoti"),
    (lambda: export_triton_repository("m.onnx", "repo", max_queue_delay_us=-1),
     "max_queue_delay_us must not be negative", "--max-queue-delay-us must not be negative"),
    (lambda: export_triton_repository("m.onnx", "repo", engine="plan"),
     "engine must be onnx or trt", "--engine must be onnx or trt"),
    (lambda: _serve_settings(port=70000), "port must lie in 0..65535", "--port must lie in 0..65535"),
    (lambda: _serve_settings(max_body_mb=64, max_inflight_mb=8),
     "max_inflight_mb (8) must be at least max_body_mb (64)",
     "--max-inflight-mb (8) must be at least --max-body-mb (64)"),
    (lambda: _serve_settings(body_timeout_s=0), "body_timeout_s must lie in (0, 3600]", "--body-timeout-s must lie"),
]


@pytest.mark.parametrize("call, python, cli", CASES, ids=[c[2][:40] for c in CASES])
def test_library_errors_name_parameters_and_the_cli_spells_flags(call, python, cli):
    with pytest.raises(AcmixDeployError) as info:
        call()
    exc = info.value
    assert python in str(exc) and not FLAG.search(str(exc)), str(exc)
    assert cli in exc.spell(flag), exc.spell(flag)
    assert "{" + exc.params[0] + "}" not in exc.spell(flag)  # every field filled


@pytest.mark.parametrize("args, said", [
    (["export", "{ckpt}", "--fp16", "--int8"], "choose one of --fp16 and --int8"),
    (["export", "{ckpt}", "--format", "engine", "--min-shape", "1x3"], "--min-shape must be NxCxHxW"),
    (["export", "{ckpt}", "--format", "triton", "--instances", "0"], "--instances must be positive, got 0"),
    (["export", "{ckpt}", "--format", "triton", "--workspace", "2"],
     "--workspace does not apply to --format triton (--workspace applies to --format engine)"),
    (["export", "{ckpt}", "--format", "aoti", "--static", "--dynamic-hw"], "combined with --static"),
    (["serve", "{ckpt}", "--read-timeout-s", "0"], "--read-timeout-s must lie in (0, 3600] seconds"),
])
def test_the_cli_prints_flags(tmp_path, args, said):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"never read: every error here comes first")
    res = runner.invoke(app, [str(ckpt) if a == "{ckpt}" else a for a in args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and said in text and "Traceback" not in text, res.output


def _cli_options() -> set[str]:
    options: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for param in cmd.params:
            options.update(getattr(param, "opts", ()))
            options.update(getattr(param, "secondary_opts", ()))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return options


def _library_files():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "cli" not in p.relative_to(PACKAGE).parts]


def _callee(call: ast.Call) -> str:
    return getattr(call.func, "id", None) or getattr(call.func, "attr", "") or ""


def _is_error(call: ast.Call) -> bool:
    name = _callee(call)
    return name.endswith("Error") or name == "OptionNotApplicable"


def test_every_parameter_a_message_names_is_a_real_flag():
    """Each literal name in a ``params=`` list, each field of the export options and the server settings (their
    messages build some names), is spelled by the CLI as one of its options; ``precision`` is spelled as the
    two flags that choose it."""
    from dataclasses import fields

    from acmix_deploy.serving.app import ServeSettings

    options = _cli_options()
    named = {f.name for f in fields(ExportOptions) + fields(ServeSettings)}
    for path in _library_files():
        tree = ast.parse(path.read_text())
        constants = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_error(node):
                for kw in node.keywords:
                    if kw.arg != "params":
                        continue
                    value = constants.get(kw.value.id, kw.value) if isinstance(kw.value, ast.Name) else kw.value
                    literals = value.elts if isinstance(value, (ast.List, ast.Tuple)) else []
                    named.update(e.value for e in literals if isinstance(e, ast.Constant) and isinstance(e.value, str))
    assert {"max_batch", "dynamic=False", "trust_pickle", "precision", "code_paths", "fmt='onnx'"} <= named
    unknown = {p: flag(p) for p in named if not {f.split()[0] for f in flag(p).split(" / ")} <= options}
    assert not unknown, f"parameters whose CLI spelling is not an option: {unknown}"


def test_no_library_error_spells_a_flag():
    """Error messages outside ``cli/`` name parameters, never ``--flags``: the strings inside every exception
    constructor and every ``*_REASON`` message.  Exempt: ``ProtocolError``, the server's HTTP answers, which
    name the ``serve`` flag an operator raises (see its docstring)."""
    found = []
    for path in _library_files():
        tree = ast.parse(path.read_text())
        roots = [n for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and _is_error(n) and _callee(n) != "ProtocolError"]
        roots += [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id.endswith("_REASON") for t in n.targets)]
        for root in roots:
            for node in ast.walk(root):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and FLAG.search(node.value):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_the_scan_sees_a_flag():
    """The scan above is not vacuous: it finds a flag in a message written the old way."""
    tree = ast.parse('raise ConfigError(f"--max-batch must be positive, got {n}")')
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call))
    assert _is_error(call) and any(FLAG.search(n.value) for n in ast.walk(call)
                                   if isinstance(n, ast.Constant) and isinstance(n.value, str))
