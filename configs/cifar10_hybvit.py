"""HybViT (classifier + diffusion, alpha 100) on CIFAR-10 32x32, 11.2M parameters (Yang et al. 2022).

The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('cifar10', 'hybvit')
