"""HybViT (classifier + diffusion, alpha 100) on 128x128 faces, 17.1M parameters (Yang et al. 2022).

CelebA has no labels here and the paper trains only GenViT on it, so this reads a labelled folder of faces (one
subfolder per class, 10 classes). The recipe is in configs/_hybrid_recipe.py."""
from configs._hybrid_recipe import config_getter

get_config = config_getter('celeba128', 'hybvit')
