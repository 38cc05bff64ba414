"""GenViT (diffusion only) on CelebA 128x128, 17.1M parameters (Yang et al. 2022).

The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('celeba128', 'genvit')
