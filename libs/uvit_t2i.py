"""``from libs.uvit_t2i import UViT``, as the U-ViT release's users write it; the backbone lives in
libs/nets/uvit_t2i.py."""
from libs.nets.uvit_t2i import UViT

__all__ = ['UViT']
