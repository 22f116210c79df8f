"""Building a pretraining run from its config: data, networks, optimizer, schedules,
monitors, and how each step runs (device, layout, precision, compilation, processes).

    trainer = build_trainer(config, Path("runs/demo"))
    summary = trainer.fit()
"""

import inspect
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from byol import distributed, ops
from byol.checkpoint import Checkpointer
from byol.config import PretrainConfig
from byol.data import build_loader
from byol.errors import UserError, plural
from byol.flat import flatten_parameters_
from byol.models import BYOL, OnlineNetwork
from byol.monitors import build_monitors
from byol.nan_policy import NonFiniteGuard
from byol.optim import LARS
from byol.runtime import autocast, process_device, to_runtime_layout
from byol.schedules import learning_rates, target_ema_rates
from byol.trainer import Trainer

# DDP's option to sync buffers before each forward; recent PyTorch renamed it and warns on
# the old name (whose False also skips the sync at the start, which SyncBN makes moot).
SYNC_BUFFERS = ("forward_sync_buffers"
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")


def build_trainer(config: PretrainConfig, run_dir: Path,
                  total_steps: int | None = None) -> Trainer:
    """A Trainer at step 0 for `config`, writing into `run_dir`. `total_steps` overrides the
    run length the config gives (a run resumed on another number of processes keeps its
    length in steps)."""
    processes = distributed.current()
    device = process_device(config.device, processes.local_rank, processes.enabled)
    ops.require_backend(config.kernels, device)
    ops.require_loss_width(config.model.projector_dim, config.kernels)
    torch.manual_seed(config.seed)  # the same initial weights on every rank

    loader = build_loader(config, device, processes.rank, processes.world_size)
    if loader.steps_per_epoch < 1:
        raise UserError(f"The data holds {plural(loader.num_images, 'image')}, fewer than one "
                        f"batch of {config.batch_size}; lower --batch-size.")
    total_steps = total_steps or config.steps or config.epochs * loader.steps_per_epoch

    model = BYOL(config.model)
    if processes.enabled and device.type == "cuda":
        # BatchNorm statistics over the whole global batch, as in the paper. (SyncBatchNorm
        # needs GPUs: on the CPU each process normalizes over its own part of the batch.)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = to_runtime_layout(model, device, config.precision)
    # From here on the parameters are views into flat buffers (byol.flat): the optimizer moves
    # the online ones into its buffer, and the target ones go into a buffer laid out like the
    # start of it, so the EMA is one pass over both.
    optimizer = LARS(model.trainable_parameters(), lr=0.0, weight_decay=config.weight_decay,
                     momentum=config.momentum, eta=config.lars_eta, clip=config.lars_clip,
                     backend=config.kernels)
    target_params = flatten_parameters_(list(model.target.parameters()))

    # The lr scales with the global batch: the per-device batch times the processes.
    peak_lr = config.lr * config.batch_size * processes.world_size / 256
    warmup_steps = round(config.warmup_epochs * loader.steps_per_epoch)
    monitors = build_monitors(config, getattr(loader, "classes", None), model.feature_dim,
                              loader.steps_per_epoch, total_steps, device)
    online_forward, target_forward = _step_callables(model, config, device, processes)
    return Trainer(
        config=config, run_dir=run_dir, processes=processes, device=device, loader=loader,
        model=model, optimizer=optimizer, target_params=target_params,
        online_forward=online_forward, target_forward=target_forward,
        autocast=autocast(device, config.precision),
        lr_schedule=learning_rates(peak_lr, warmup_steps, total_steps).tolist(),
        tau_schedule=target_ema_rates(config.tau_base, total_steps).tolist(),
        total_steps=total_steps, monitors=monitors,
        checkpointer=Checkpointer(run_dir, config.checkpoint_every, config.keep_checkpoints,
                                  processes.is_main),
        guard=NonFiniteGuard(config.on_nan, config.max_skipped_steps),
    )


def _step_callables(model: BYOL, config: PretrainConfig, device: torch.device,
                    processes: distributed.Processes) -> tuple[nn.Module, nn.Module]:
    """(online forward, target forward): the networks as a step calls them, wrapped for
    several processes and compiled as the config asks. They live beside the modules, so
    state dicts keep their plain names."""
    online: nn.Module = OnlineNetwork(model.online, model.predictor)
    if processes.enabled:
        # DDP averages the gradients, bucketed and overlapped with the backward pass. With
        # gradient_as_bucket_view off, it reduces in its own buckets and copies the result
        # back into each p.grad in place, so the gradients stay views of the optimizer's flat
        # buffer and the fused LARS still covers them in two launches. The price is two
        # copies per gradient (about 8 bytes per parameter); bucket views instead would leave
        # the gradients scattered over DDP's buckets, in DDP's order.
        # Rank 0's BatchNorm statistics go to all before each forward on the CPU, which has
        # no SyncBatchNorm; on GPUs SyncBN keeps them equal.
        online = DistributedDataParallel(
            online, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=False, **{SYNC_BUFFERS: device.type != "cuda"})
    compile_fn = torch.compile if config.compile else (lambda module: module)
    return compile_fn(online), compile_fn(model.target)
