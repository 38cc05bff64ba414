"""``from libs.uvit import UViT``, as the U-ViT release's users write it; the backbone lives in libs/nets/uvit.py."""
from libs.nets.uvit import UViT, UViTTrunk

__all__ = ['UViT', 'UViTTrunk']
