"""DDAE's edm_ddpmpp on CIFAR-10 32x32 (Xiang et al. 2023); the recipe and its published numbers are in
configs/_ddae_recipe.py."""
from configs._ddae_recipe import config_getter

get_config = config_getter('edm_ddpmpp')
