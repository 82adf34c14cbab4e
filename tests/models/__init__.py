"""acmix_deploy/models/: whole networks (registry, ACmix and X-volution backbones) and their exactness."""
