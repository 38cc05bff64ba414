"""Diffusion frameworks (framework.py: the interface the Trainer and the evaluation harness use), their schedules,
samplers, guidance and conditioning. ``config.framework`` names the framework; adding one is a file and a line in
FRAMEWORKS."""
from libs.diffusion.ctmc import CTMCFramework
from libs.diffusion.edm import EDMFramework
from libs.diffusion.framework import Framework
from libs.diffusion.gaussian import GaussianFramework
from libs.errors import UserError

FRAMEWORKS = {
    'gaussian': GaussianFramework.from_config,
    'edm': EDMFramework.from_config,
    'ctmc': CTMCFramework.from_config,
}


def build_framework(config) -> Framework:
    """The framework named by ``config.framework``, built from the rest of the config."""
    name = config.get('framework', 'gaussian')
    if name not in FRAMEWORKS:
        raise UserError(f"unknown config.framework {name!r}; known: {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[name](config)
