"""acmix_deploy/runtime/: the runner interface, the suffix table, and the OpenVINO runner."""
