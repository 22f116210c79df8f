"""Data for pretraining: sources of two-view batches (see `loaders`)."""

from pathlib import Path

import torch

from byol.config import PretrainConfig
from byol.data.loaders import RandomTensorLoader, TwoViewBatch, TwoViewLoader, demo_loader

__all__ = ["TwoViewBatch", "TwoViewLoader", "build_loader"]


def build_loader(config: PretrainConfig, device: torch.device) -> TwoViewLoader:
    """The two-view loader for `config.data`: `demo`, `random`, an image folder or shards."""
    if config.data == "demo":
        return demo_loader(image_size=config.image_size, batch_size=config.batch_size,
                           seed=config.seed, workers=config.workers, device=device)
    if config.data == "random":
        return RandomTensorLoader(image_size=config.image_size, batch_size=config.batch_size,
                                  seed=config.seed, device=device)
    # DALI is imported only when files are read.
    from byol.data.dali import folder_loader, shards_loader
    from byol.data.shards import is_shard_source

    common = dict(image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
                  workers=config.workers, device=device)
    if is_shard_source(config.data):
        return shards_loader(config.data, **common)
    return folder_loader(Path(config.data), strict=config.strict, **common)
