"""GenViT (diffusion only) on ImageNet 32x32, 11.6M parameters (Yang et al. 2022).

The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('img32', 'genvit')
