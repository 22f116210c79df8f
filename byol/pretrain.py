"""Setting up a pretraining run: a fresh one, or one resumed from a checkpoint.

    trainer, resumed_from = prepare_run(preset=None, overrides={"steps": 100}, out=None,
                                        resume=None)
    summary = trainer.fit()
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from byol.checkpoint import LAST, STEP_DIR, load_checkpoint
from byol.config import RUNTIME_FIELDS, apply_overrides, flat_items, from_dict, validate
from byol.errors import UserError
from byol.presets import resolve_config
from byol.trainer import Trainer, check_resume_compatible, config_from_checkpoint, write_config

RUNS_ROOT = Path("runs")


def runtime_defaults(requested: dict[str, Any]) -> dict[str, Any]:
    """Device, precision and compilation that suit this machine, unless the user chose them.

    A GPU gets bf16 autocast and torch.compile; the CPU gets fp32 and eager execution.
    """
    cuda = torch.cuda.is_available()
    device = requested.get("device", "cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise UserError("--device cuda needs a GPU and none is visible; use --device cpu.")
    on_gpu = device == "cuda"
    return {"device": device, "precision": "bf16" if on_gpu else "fp32", "compile": on_gpu}


def default_run_dir(arch: str) -> Path:
    """runs/<arch>-<date>-<time>."""
    return RUNS_ROOT / f"{arch}-{datetime.now():%Y%m%d-%H%M%S}"


def checkpoint_run_dir(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (last.pt sits in it, step files one below)."""
    if checkpoint.is_dir():
        return checkpoint
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == STEP_DIR else parent


def find_resumable_run(config_items: dict[str, Any]) -> Path | None:
    """The newest run under runs/ with a last.pt and the same settings (runtime ones aside)."""
    def same_run(run_dir: Path) -> bool:
        try:
            saved = flat_items(from_dict(json.loads((run_dir / "config.json").read_text())))
        except (OSError, ValueError, TypeError, KeyError):
            return False
        return all(saved.get(k) == v for k, v in config_items.items() if k not in RUNTIME_FIELDS)

    candidates = sorted(RUNS_ROOT.glob("*/" + LAST), key=lambda p: p.stat().st_mtime)
    for last in reversed(candidates):
        if same_run(last.parent):
            return last.parent
    return None


def prepare_run(preset: str | None, overrides: dict[str, Any], out: Path | None,
                resume: str | None) -> tuple[Trainer, Path | None]:
    """A ready Trainer and the checkpoint it continues from (None for a fresh run).

    overrides: the flat config keys the user set (config file, then flags).
    resume: None (fresh run), "auto" (continue the matching run if there is one) or a path.
    """
    checkpoint = None
    if resume not in (None, "auto"):
        checkpoint = Path(resume)
    else:
        config = resolve_config(preset, {**runtime_defaults(overrides), **overrides})
        run_dir = out or (find_resumable_run(flat_items(config)) if resume == "auto" else None)
        if run_dir is not None and (run_dir / LAST).is_file():
            if resume is None:
                raise UserError(
                    f"{run_dir} already holds a run; pass --resume auto to continue it, or "
                    "choose another --out."
                )
            checkpoint = run_dir / LAST

    if checkpoint is None:
        run_dir = out or default_run_dir(config.model.arch)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(config, run_dir)
        return Trainer(config, run_dir), None

    state = load_checkpoint(checkpoint)
    saved = config_from_checkpoint(state, checkpoint)
    check_resume_compatible(saved, overrides)
    runtime = {k: v for k, v in {**runtime_defaults(overrides), **overrides}.items()
               if k in RUNTIME_FIELDS}
    config = apply_overrides(saved, runtime)
    validate(config)
    run_dir = out or checkpoint_run_dir(checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, run_dir)
    trainer = Trainer(config, run_dir)
    if state["total_steps"] != trainer.total_steps:
        raise UserError(
            f"{checkpoint} belongs to a run of {state['total_steps']} steps but its settings "
            f"now give {trainer.total_steps}; the data changed size - resume on the same data."
        )
    trainer.restore(state)
    return trainer, checkpoint
