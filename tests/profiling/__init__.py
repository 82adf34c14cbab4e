"""acmix_deploy/profiling/ and analysis.py: timing, statistics, reports, MAC counts; the benchmarks' protocol."""
