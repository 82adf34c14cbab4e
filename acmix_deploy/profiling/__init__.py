"""Latency profiling: timing protocol, statistics, device fingerprint, reports."""

from .fingerprint import cpu_model, device_fingerprint
from .profiler import BACKENDS, REPORT_SCHEMA, ProfileSettings, profile_model
from .report import load_report, markdown_table, merged_rows, plot_reports, save_csv, save_json
from .stats import percentile, summarize

__all__ = [
    "BACKENDS", "REPORT_SCHEMA", "ProfileSettings", "cpu_model", "device_fingerprint", "load_report", "markdown_table",
    "merged_rows", "percentile", "plot_reports", "profile_model", "save_csv", "save_json", "summarize",
]
