"""Discrete-state diffusion on the bundled 8x8 digits with a DiT backbone: configs/digits_discrete_uvit.py with
its U-ViT replaced by the DiT of configs/digits_dit.py (hidden 128, depth 4, MLP ratio 4, patch 2: the U-ViT's
forward FLOPs) with the discrete head, (B, 1, 8, 8, 17) logits. The DiT drops labels inside the network
(``class_dropout_prob`` 0.1, "no class" = label 10, ``train.p_uncond`` 0). It trains 1500 steps: its steps cost
more than the U-ViT's at the same FLOPs (320-340 against 420 images/s here), and 2000 of them made the run 7 min
56 s on the slowest 2-core CPU (0.994 / 6.6), too close to the digits' 10 minutes."""
from configs.digits_discrete_uvit import get_config as discrete_uvit_config
from configs.digits_dit import get_config as dit_config
from libs.config import resolve


def get_config():
    config = discrete_uvit_config()
    config.nnet = dit_config().nnet
    channels = config.nnet.in_channels
    config.nnet.update(num_states=config.ctmc.num_states, in_channels=2 * channels if config.ctmc.rate == 'absorbing'
                       else channels, out_chans=channels)
    config.train.update(p_uncond=0.0, n_steps=1500, eval_interval=750, save_interval=750)
    return resolve(config)
