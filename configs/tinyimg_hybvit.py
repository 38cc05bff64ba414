"""HybViT (classifier + diffusion, alpha 100) on Tiny ImageNet 64x64, 11.4M parameters (Yang et al. 2022).

The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('tinyimg', 'hybvit')
