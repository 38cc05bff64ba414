"""ViT diffusion training suite: backbones, noise schedules, samplers, data, metrics and the training loop."""
