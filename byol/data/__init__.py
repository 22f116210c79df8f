"""Data for pretraining: sources of two-view batches (see `loaders`)."""

import torch

from byol.config import PretrainConfig
from byol.data.loaders import RandomTensorLoader, TwoViewBatch, TwoViewLoader, demo_loader
from byol.errors import UserError

__all__ = ["TwoViewBatch", "TwoViewLoader", "build_loader"]


def build_loader(config: PretrainConfig, device: torch.device) -> TwoViewLoader:
    """The two-view loader for `config.data`: `demo` or `random`."""
    if config.data == "demo":
        return demo_loader(image_size=config.image_size, batch_size=config.batch_size,
                           seed=config.seed, workers=config.workers, device=device)
    if config.data == "random":
        return RandomTensorLoader(image_size=config.image_size, batch_size=config.batch_size,
                                  seed=config.seed, device=device)
    raise UserError(
        f"--data {config.data}: this version reads only the built-in sources; "
        "use --data demo or --data random."
    )
