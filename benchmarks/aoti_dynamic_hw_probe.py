"""Can the installed torch build an AOTInductor package with dynamic height and width?  A probe, not a feature.

``export --format aoti --dynamic-hw`` is refused (``exporters/aoti.py``, ``AOTI_DYNAMIC_HW_REASON``).  This
script re-checks the reason on the installed torch, so that the refusal can be lifted when torch can do it:

1. the deploy form of ``acmix_resnet_tiny`` (random weights) is captured by ``torch.export`` with symbolic
   batch, height and width (``8 * Dim``), its attention index tables computed with torch operators on the
   symbolic sizes (the same algebra as ``modules/dynamic_halo.py``'s NumPy and ONNX spellings; patched in
   here, the library itself keeps only those two);
2. the captured program is compared with the training form at several sizes;
3. AOTInductor compiles it (``--compile``) and the package is compared again.

Each step reports its first error line instead of stopping the probe.  Findings so far (docs/dynamic_shapes.md):
torch 2.9 captured at 32x32 and the package aborted in a generated gather kernel; torch 2.13.0 (CPU) captures
exactly when traced at 64x64 (every map at least two tiles: a map of one tile at the traced size is
specialised to one tile), and AOTInductor's compilation stops on an internal assertion.

    python benchmarks/aoti_dynamic_hw_probe.py --trace 64 64 --sizes 64x64 40x64 48x56 80x72 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import acmix_deploy as ad
import acmix_deploy.modules.acmix as acmix_mod
import acmix_deploy.modules.dynamic_halo as halo
from acmix_deploy.testing import randomize_model


def _hint(v) -> int:
    """The example value behind a symbolic size (no guard: the plan's tile only needs the traced size)."""
    return v.node.hint if isinstance(v, torch.SymInt) else int(v)


def symbolic_tables(qkv: torch.Tensor, spec: halo.DynamicHaloSpec) -> halo.DynamicHaloTables:
    """``dynamic_halo_tables`` in torch operators on ``qkv``'s (symbolic) height and width."""
    ka, s, ty, tx, groups = spec.geometry
    pad, dev = (ka - 1) // 2, qkv.device
    ky, kx = (ty - 1) * s + ka, (tx - 1) * s + ka
    hh, ww = qkv.shape[2], qkv.shape[3]
    h_out, w_out = (hh + s - 1) // s, (ww + s - 1) // s
    nty, ntx = (h_out + ty - 1) // ty, (w_out + tx - 1) // tx

    def reflected(n, t, k, nt):
        pos = (torch.arange(nt, device=dev) * (s * t) - pad)[:, None] + torch.arange(k, device=dev)[None, :]
        return torch.clamp((n - 1) - ((n - 1) - pos.abs()).abs(), min=0)

    rows, cols = reflected(hh, ty, ky, nty), reflected(ww, tx, kx, ntx)
    key = (rows[:, None, :, None] * ww + cols[None, :, None, :]).reshape(-1, ky * kx)
    tiles = nty * ntx
    if groups > 1:
        run = (tiles + groups - 1) // groups
        key = key[torch.clamp(torch.arange(run * groups, device=dev), max=tiles - 1)]
    key = key.reshape(groups, -1, ky * kx)
    query = key[:, :, torch.from_numpy(halo._query_slots(spec.geometry)).to(dev)]
    oy, ox = torch.arange(h_out, device=dev), torch.arange(w_out, device=dev)
    slot_y = oy * tx + (oy // ty) * (ty * tx * (ntx - 1))
    slot_x = ox + (ox // tx) * (tx * (ty - 1))

    def loc(n):
        return torch.arange(n, device=dev).to(qkv.dtype) * (2.0 / (n - 1)) - 1.0

    return halo.DynamicHaloTables(
        tuple(query[i:i + 1] for i in range(groups)), tuple(key[i:i + 1] for i in range(groups)),
        (slot_y[:, None] + slot_x[None, :]).reshape(-1), (0, -1, h_out, w_out),
        loc(ww).reshape(1, -1, 1), loc(hh).reshape(-1, 1, 1))


def _reshape(x: torch.Tensor, shape) -> torch.Tensor:
    """``halo._reshape`` for torch.export: ONNX's 0-keeps-the-axis rule on possibly symbolic shapes."""
    return x.reshape([x.shape[i] if isinstance(v, int) and v == 0 else v for i, v in enumerate(shape)])


def _deploy_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``ACmixDeploy.forward``'s dynamic branch without turning the symbolic sizes into ints."""
    acmix_mod._check_input(x, self.in_planes, self.kernel_att, self.stride, "ACmixDeploy")
    qkv = self.qkv(x)
    out = self._conv_path(qkv)
    hh, ww = _hint(x.shape[-2]), _hint(x.shape[-1])
    spec = halo.make_dynamic_halo_spec(self.halo_plan(hh, ww, x.dtype, x.device), self.kernel_att, self.stride,
                                       self.head_dim)
    att = halo.dynamic_halo_attention(qkv, self.pos_weight, spec, symbolic_tables(qkv, spec))
    if self.mode == "scaled":
        att = att * self.att_scale.view(1, -1, 1, 1)
    return att + out


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="traced size")
    ap.add_argument("--sizes", nargs="+", default=["64x64", "40x64", "48x56", "80x72"],
                    help="sizes (HxW, multiples of 8) to compare at")
    ap.add_argument("--max", type=int, default=128, help="largest height and width the Dims allow")
    ap.add_argument("--compile", action="store_true", help="also compile with AOTInductor and compare the package")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    report: dict = {"torch": torch.__version__, "trace": args.trace, "capture": None, "exported": {},
                    "compile": None, "package": {}}
    torch.manual_seed(0)
    train = randomize_model(ad.create_model("acmix_resnet_tiny"), 0).eval()
    deploy = ad.reparameterize_model(train).eval()
    halo._reshape = _reshape
    acmix_mod.ACmixDeploy.forward = _deploy_forward
    dims = ({0: torch.export.Dim("batch", min=1, max=64), 2: 8 * torch.export.Dim("h", min=2, max=args.max // 8),
             3: 8 * torch.export.Dim("w", min=2, max=args.max // 8)},)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(deploy, (torch.randn(2, 3, *args.trace),), dynamic_shapes=dims)
        report["capture"] = f"ok in {time.perf_counter() - t0:.1f} s"
    except Exception as exc:  # torch.export raises many internal types; the probe reports the first line
        program, report["capture"] = None, _first_line(exc)
    print("capture:", report["capture"], flush=True)

    def compare(fn, key):
        for hh, ww in sizes:
            for batch in (1, 3):
                x = torch.randn(batch, 3, hh, ww)
                try:
                    with torch.no_grad():
                        value = f"{_relative(fn(x), train(x)):.2e}"
                except Exception as exc:  # a guard refusing the size, a kernel error
                    value = _first_line(exc)
                report[key][f"{hh}x{ww} b{batch}"] = value
                print(f"  {key} {hh}x{ww} batch {batch}: {value}", flush=True)

    if program is not None:
        compare(program.module(), "exported")
        if args.compile:
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
                    warnings.simplefilter("ignore")
                    path = torch._inductor.aoti_compile_and_package(program, package_path=f"{tmp}/probe.pt2")
                    package = torch._inductor.aoti_load_package(path)
                    report["compile"] = f"ok in {time.perf_counter() - t0:.1f} s"
                    compare(package, "package")
            except Exception as exc:
                report["compile"] = _first_line(exc)
            print("compile:", report["compile"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["capture"].startswith("ok") and (not args.compile or str(report["compile"]).startswith("ok"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
