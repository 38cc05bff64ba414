"""The DiT release's import path: ``from libs.dit import DiT, DiT_models`` (the backbone lives in libs/nets/dit.py)."""
from libs.nets.dit import DiT, DiT_models

__all__ = ['DiT', 'DiT_models']
