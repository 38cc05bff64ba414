"""What the data of a latent diffusion model are: the autoencoder's latents, described by ``LatentFormat``.

An autoencoder maps images (B, 3, H, W) to codes z (B, C, H / f, W / f); the diffusion model sees the latents
``(z - shift) * scale`` and its samples are decoded from ``z = latents / scale + shift``, as diffusers' pipelines do.
Feature extraction (libs/latent/extract.py) records the format in the store's ``info.json``; training reads it from
there, evaluation from the autoencoder's folder (libs/latent/autoencoder.py: ``autoencoder_format``).
"""
import dataclasses

# Stores written before the format was recorded hold Stable Diffusion (KL-f8) moments, read at its scale.
LEGACY_AUTOENCODER = 'AutoencoderKL'
LEGACY_SCALE = 0.18215
STORED = ('moments', 'latents')


@dataclasses.dataclass(frozen=True)
class LatentFormat:
    """The latents of one autoencoder.

    ``autoencoder``: its diffusers class name; ``channels`` C and ``factor`` f: latents are (C, H / f, W / f);
    ``scale``, ``shift``: latents = (z - shift) * scale. ``stored``: what a feature store holds of z, 'moments'
    (mean | log-variance of the encoder's Gaussian, 2C channels: a fresh z is drawn at every training step) or
    'latents' (z itself, C channels: a deterministic encoder such as DC-AE's). ``source``: the file or folder it was
    read from, for messages.
    """

    autoencoder: str
    channels: int
    factor: int
    scale: float
    shift: float = 0.0
    stored: str = 'moments'
    source: str = ''

    def __post_init__(self):
        if self.stored not in STORED:
            raise ValueError(f"stored must be one of {', '.join(STORED)}, got {self.stored!r}")
        if self.channels < 1 or self.factor < 1 or self.scale == 0:
            raise ValueError(f'channels and factor must be positive and scale non-zero, got {self.channels}, '
                             f'{self.factor}, {self.scale}')

    @property
    def stored_channels(self) -> int:
        """Channels of what a store holds per latent: 2C moments or C latents."""
        return 2 * self.channels if self.stored == 'moments' else self.channels

    def info(self) -> dict:
        """The entries of a store's info.json."""
        return dict(autoencoder_class=self.autoencoder, latent_channels=self.channels, downsampling=self.factor,
                    scaling_factor=self.scale, shift_factor=self.shift, stored=self.stored)

    @classmethod
    def from_info(cls, info: dict, source: str) -> 'LatentFormat':
        """The format an info.json records; a store written before it was recorded holds the Stable Diffusion
        autoencoder's moments (the factor then comes from the image and latent sizes)."""
        channels, _, side = (int(v) for v in info['latent_shape'])
        if 'autoencoder_class' not in info:
            return cls(LEGACY_AUTOENCODER, channels, int(info['resolution']) // side, LEGACY_SCALE, 0.0, 'moments',
                       source)
        return cls(info['autoencoder_class'], int(info['latent_channels']), int(info['downsampling']),
                   float(info['scaling_factor']), float(info['shift_factor']), info['stored'], source)

    def describe(self) -> str:
        return (f'{self.autoencoder}, {self.channels} channels, down-sampling {self.factor}, scale {self.scale:g}, '
                f'shift {self.shift:g}')
