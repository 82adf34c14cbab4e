"""The layers of acmix_deploy/modules/: ACmix, the window-attention core, X-volution, Swin-form ACmix."""
