"""Data for pretraining: sources of two-view batches (see `loaders`)."""

from pathlib import Path

import torch

from byol.config import PretrainConfig
from byol.data.loaders import RandomTensorLoader, TwoViewBatch, TwoViewLoader
from byol.errors import UserError

__all__ = ["TwoViewBatch", "TwoViewLoader", "build_loader"]


def build_loader(config: PretrainConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> TwoViewLoader:
    """The two-view loader for `config.data`: `demo`, `random`, an image folder or shards.
    With several processes, each reads its own `1 / world_size` of every epoch."""
    if config.data == "random":
        return RandomTensorLoader(image_size=config.image_size, batch_size=config.batch_size,
                                  seed=config.seed, device=device, rank=rank,
                                  world_size=world_size)
    # DALI is imported only for sources it decodes and augments.
    from byol.data.dali import demo_loader, folder_loader, shards_loader
    from byol.data.shards import is_shard_source

    common = dict(image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
                  workers=config.workers, device=device, rank=rank, world_size=world_size,
                  blur=config.blur)
    if config.data == "demo":
        return demo_loader(**common)
    if is_shard_source(config.data):
        if config.in_memory:  # the demo dataset is in memory already
            raise UserError(f"--in-memory: --data {config.data} is shards, not an image "
                            "folder; drop the flag.")
        return shards_loader(config.data, **common)
    return folder_loader(Path(config.data), strict=config.strict,
                         in_memory=config.in_memory, **common)
