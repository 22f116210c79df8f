"""Data for pretraining: sources of two-view batches (see `loaders`)."""

from pathlib import Path

import torch

from byol.config import PretrainConfig
from byol.data.loaders import RandomTensorLoader, TwoViewBatch, TwoViewLoader, demo_loader

__all__ = ["TwoViewBatch", "TwoViewLoader", "build_loader"]


def build_loader(config: PretrainConfig, device: torch.device) -> TwoViewLoader:
    """The two-view loader for `config.data`: `demo`, `random` or an image folder."""
    if config.data == "demo":
        return demo_loader(image_size=config.image_size, batch_size=config.batch_size,
                           seed=config.seed, workers=config.workers, device=device)
    if config.data == "random":
        return RandomTensorLoader(image_size=config.image_size, batch_size=config.batch_size,
                                  seed=config.seed, device=device)
    from byol.data.dali import DaliFolderLoader  # DALI only when a folder is read

    return DaliFolderLoader(Path(config.data), image_size=config.image_size,
                            batch_size=config.batch_size, seed=config.seed,
                            workers=config.workers, device=device, strict=config.strict)
