"""HybViT (classifier + diffusion, alpha 100) on STL-10 96x96, 12.9M parameters (Yang et al. 2022).

The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('stl10', 'hybvit')
