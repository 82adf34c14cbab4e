"""acmix_deploy/serving/: the KServe v2 / Triton HTTP server, its protocol parser, faults and batching."""
