"""HybViT (classifier + diffusion, alpha 100) on a 10-class ImageNet subset,
224x224, 83.9M parameters (Yang et al. 2022).

The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('img224_10', 'hybvit')
