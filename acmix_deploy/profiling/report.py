"""Saving, loading, merging and plotting profile reports.

JSON schema (keys kept stable; more may be added)::

    {"schema": "acmix-deploy/profile/1", "device": {...}, "model": {...},
     "settings": {...}, "results": [{"backend", "form", "batch", "mean_ms", "std_ms",
     "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "throughput_per_s",
     "peak_mem_mb", ...}], "compare_forms": [...], "layers": {...}}
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..util import atomic_write
from ..errors import AcmixDeployError
from ..util import require

__all__ = ["save_json", "save_csv", "load_report", "merged_rows", "markdown_table", "plot_reports", "device_label",
           "CSV_COLUMNS"]

CSV_COLUMNS = ["device", "arch", "backend", "form", "conv_layout", "imgsz", "batch", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms",
               "p95_ms", "p99_ms", "max_ms", "throughput_per_s", "peak_mem_mb", "runs"]
REQUIRED = ("device", "model", "results")
REQUIRED_ROW = ("backend", "batch", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s")


def device_label(device: dict) -> str:
    name = device.get("gpu") if device.get("device") == "cuda" and device.get("gpu") else device.get("cpu", "?")
    return f"{name} ({device.get('threads', '?')} threads)" if device.get("device") != "cuda" else name


def save_json(report: dict, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))


def _report_labels(reports: list[dict]) -> list[tuple[str, str]]:
    """``(device, model)`` label of each report, unique: reports that share both (two runs on one machine) get
    their file name (``load_report`` records it) or their position appended to the device, so that their rows
    stay apart in tables and their series in plots (one series per label, not one zig-zag)."""
    base = []
    for rep in reports:
        arch = rep["model"].get("arch") or Path(rep["model"].get("path", "?")).name
        base.append((device_label(rep["device"]), str(arch)))
    labels = []
    for i, (rep, (dev, arch)) in enumerate(zip(reports, base)):
        if base.count((dev, arch)) > 1:
            dev = f"{dev}, {rep.get('_source') or f'report {i + 1}'}"
        labels.append((dev, arch))
    if len(set(labels)) < len(labels):  # the same file given twice: positions decide
        labels = [(f"{dev} #{i + 1}", arch) for i, (dev, arch) in enumerate(labels)]
    return labels


def merged_rows(reports: list[dict]) -> list[dict]:
    rows = []
    for rep, (dev, arch) in zip(reports, _report_labels(reports)):
        for r in rep["results"]:
            row = {"device": dev, "arch": arch, **{k: r.get(k) for k in CSV_COLUMNS if k in r}}
            if isinstance(row.get("imgsz"), (list, tuple)):  # (height, width) -> "HxW"
                row["imgsz"] = "x".join(map(str, row["imgsz"]))
            rows.append(row)
    return rows


def save_csv(reports: list[dict], path: str | os.PathLike) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in merged_rows(reports):
        writer.writerow(row)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def load_report(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AcmixDeployError(f"report {path} does not exist")
    try:
        rep = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AcmixDeployError(f"{path} is not a JSON profile report: {exc}") from None
    if not isinstance(rep, dict) or any(k not in rep for k in REQUIRED):
        raise AcmixDeployError(f"{path} is not a profile report: it needs the keys {', '.join(REQUIRED)}")
    for i, row in enumerate(rep["results"]):
        missing = [k for k in REQUIRED_ROW if k not in row]
        if missing:
            raise AcmixDeployError(f"{path}: result {i} lacks {', '.join(missing)}")
    rep["_source"] = str(path)  # not part of the format: tells apart reports that share device and model
    return rep


def _form_label(row: dict) -> str:
    """The form, with the convolution-path layout it ran on where the profile timed several."""
    form = row.get("form") or ""
    return f"{form} ({row['conv_layout']})" if row.get("conv_layout") else form


def markdown_table(reports: list[dict]) -> str:
    lines = ["| device | model | backend | form | batch | mean ms | p50 ms | p90 ms | p99 ms | samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in merged_rows(reports):
        lines.append(
            f"| {r['device']} | {r['arch']} | {r['backend']} | {_form_label(r)} | {r['batch']} | "
            f"{r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['throughput_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_reports(reports: list[dict], path: str | os.PathLike, title: str = "latency (p50) vs batch") -> Path:
    """One line per (device, model, backend, form): median latency against batch, log-log axes."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (binds matplotlib.ticker)

    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in merged_rows(reports):
        key = (r["device"], r["arch"], r["backend"], " ".join(x for x in (_form_label(r), r.get("imgsz")) if x))
        series.setdefault(key, []).append((r["batch"], r["p50_ms"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for (dev, arch, backend, form), pts in sorted(series.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o",
                label=f"{arch} {form} / {backend} / {dev}".replace("  ", " "))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted({b for pts in series.values() for b, _ in pts})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=120)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
