"""acmix_deploy/cli/: the command line end to end, info, report targets, hostile input files."""
