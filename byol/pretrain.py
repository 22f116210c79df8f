"""Setting up a pretraining run: a fresh one, or one resumed from a checkpoint.

    trainer, resumed_from = prepare_run(preset=None, overrides={"steps": 100}, out=None,
                                        resume=None)
    summary = trainer.fit()

Nothing is written until the run is known to be startable, and a folder that holds a run is
only ever continued, never overwritten.
"""

import errno
import json
from pathlib import Path
from typing import Any

from byol import distributed
from byol.build import build_trainer
from byol.checkpoint import atomic_write_text, load_checkpoint, saved_step
from byol.config import (
    RUNTIME_FIELDS,
    PretrainConfig,
    apply_overrides,
    flat_items,
    from_dict,
    to_dict,
    validate,
)
from byol.data.folders import printable
from byol.data.labeled import VAL_SPLITS
from byol.errors import UserError
from byol.monitors import held_out_data
from byol.presets import preset_values, resolve_config
from byol.run_folder import (
    CLASSES_FILE,
    CONFIG_FILE,
    LAST,
    RUNS_ROOT,
    SKIPPED_FILE,
    checkpoint_file,
    checkpoint_run_dir,
    default_run_dir,
    holds_run,
    remove_leftovers,
)
from byol.runtime import runtime_defaults
from byol.trainer import Trainer, saved_world_size


def same_settings(run_dir: Path, config_items: dict[str, Any]) -> bool:
    """Whether the run in `run_dir` has these settings (runtime ones aside)."""
    try:
        saved = flat_items(from_dict(json.loads((run_dir / CONFIG_FILE).read_text())))
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return all(saved.get(k) == v for k, v in config_items.items() if k not in RUNTIME_FIELDS)


def find_resumable_run(config_items: dict[str, Any]) -> Path | None:
    """The newest run under runs/ with a last.pt and the same settings (runtime ones aside)."""
    candidates = sorted(RUNS_ROOT.glob("*/" + LAST), key=lambda p: p.stat().st_mtime)
    return next((last.parent for last in reversed(candidates)
                 if same_settings(last.parent, config_items)), None)


def check_resume_compatible(saved: PretrainConfig, requested: dict[str, Any]) -> None:
    """UserError if a setting given for a resumed run would change what the run computes."""
    saved_items = flat_items(saved)
    conflicts = sorted(name for name, value in requested.items()
                       if name not in RUNTIME_FIELDS and saved_items.get(name) != value)
    if conflicts:
        described = ", ".join(f"{n}={requested[n]!r} (run has {saved_items.get(n)!r})"
                              for n in conflicts)
        raise UserError(
            f"Cannot resume with changed settings: {described}; drop them, or start a new "
            "run with another --out."
        )


def prepare_run(preset: str | None, overrides: dict[str, Any], out: Path | None,
                resume: str | None) -> tuple[Trainer, Path | None]:
    """A ready Trainer and the checkpoint it continues from (None for a fresh run).

    overrides: the flat config keys the user set (config file, then flags).
    resume: None (fresh run), "auto" (continue the matching run if there is one) or a path.
    Under torchrun, rank 0 decides where the run lives and every rank follows.
    """
    device = {**runtime_defaults(overrides), **overrides}["device"]
    distributed.setup(device)
    kind, path, resume_out = distributed.decided_by_main(
        lambda: _plan(preset, overrides, out, resume))
    if kind == "resume":
        return _resume(path, preset, overrides, resume_out)
    config = resolve_config(preset, {**runtime_defaults(overrides), **overrides})
    trainer = build_trainer(config, path)
    _start_run_dir(trainer)
    return trainer, None


def _plan(preset: str | None, overrides: dict[str, Any], out: Path | None,
          resume: str | None) -> tuple[str, Path, Path | None]:
    """("resume", checkpoint, out) or ("fresh", run folder, None); UserError if neither."""
    if resume not in (None, "auto"):
        if Path(resume).is_dir() and not (Path(resume) / LAST).is_file():
            raise UserError(f"{resume} holds no checkpoint yet; to start or continue the run in "
                            f"it, pass --resume auto --out {resume}.")
        return "resume", Path(resume), out
    config = resolve_config(preset, {**runtime_defaults(overrides), **overrides})
    run_dir = out or (find_resumable_run(flat_items(config)) if resume == "auto" else None)
    if run_dir is not None and resume == "auto" and (run_dir / LAST).is_file():
        return "resume", run_dir / LAST, None
    if run_dir is not None and resume is None and holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run; pass --resume auto to continue it, "
                        "or choose another --out.")
    if (run_dir is not None and holds_run(run_dir)  # --resume auto, but nothing to resume
            and not same_settings(run_dir, flat_items(config))):
        raise UserError(f"{run_dir} holds a run with other settings and no checkpoint; delete "
                        "the folder or choose another --out.")
    # A run that stopped before its first checkpoint starts over in its folder.
    run_dir = run_dir or default_run_dir(config.model.arch)
    _check_outside_data(run_dir, config)
    return "fresh", run_dir, None


def _resume(checkpoint: Path, preset: str | None, overrides: dict[str, Any],
            out: Path | None) -> tuple[Trainer, Path]:
    state = load_checkpoint(checkpoint)
    try:
        saved = from_dict(state["config"])
    except (KeyError, TypeError) as error:
        raise UserError(f"{checkpoint} holds no usable run config; it was not written by "
                        "byolctl pretrain.") from error
    requested = {**preset_values(preset, overrides), **overrides} if preset else overrides
    check_resume_compatible(saved, requested)
    runtime = {k: v for k, v in {**runtime_defaults(overrides), **overrides}.items()
               if k in RUNTIME_FIELDS}
    config = apply_overrides(saved, runtime)
    validate(config)

    home = checkpoint_run_dir(checkpoint)
    run_dir = out or home
    _check_outside_data(run_dir, config)
    if run_dir.resolve() == home.resolve():
        _refuse_rewinding(checkpoint, state["step"], home)
    elif holds_run(run_dir):
        raise UserError(f"{run_dir} already holds another run; choose an empty --out to "
                        f"continue {checkpoint} there.")
    # On another number of processes the run keeps its length in steps (see Trainer.restore).
    same_processes = saved_world_size(state) == distributed.current().world_size
    trainer = build_trainer(config, run_dir,
                            total_steps=None if same_processes else state["total_steps"])
    if state["total_steps"] != trainer.total_steps:
        raise UserError(
            f"{checkpoint} belongs to a run of {state['total_steps']} steps but its settings "
            f"now give {trainer.total_steps}; the data changed size - resume on the same data."
        )
    try:
        trainer.restore(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"{checkpoint} does not match the run its settings describe "
                        f"({type(error).__name__}); it is damaged or was not written by "
                        "byolctl pretrain.") from error
    _start_run_dir(trainer)
    return trainer, checkpoint


def _refuse_rewinding(checkpoint: Path, step: int, run_dir: Path) -> None:
    """Refuse to continue a run in its own folder from a checkpoint older than its last.pt:
    the first save would delete the later checkpoints and the metrics after `step`. (An
    unreadable last.pt does not stop it: resuming from an older file is then the way out.)"""
    last = run_dir / LAST
    if not last.is_file() or last.samefile(checkpoint_file(checkpoint)):
        return
    newest = saved_step(last)
    if newest is not None and newest > step:
        raise UserError(f"{checkpoint} is step {step}, but the run in {run_dir} has gone on "
                        f"to step {newest}; continuing it there would delete the later "
                        "checkpoints and metrics. Branch from it into a new folder with --out "
                        f"NEWDIR, or continue the newest with --resume auto --out {run_dir}.")


def _start_run_dir(trainer: Trainer) -> None:
    """Create the run folder; save the resolved config, the class names of labeled data and
    the list of skipped unreadable images. Rank 0 only."""
    if not distributed.current().is_main:
        return
    files = {CONFIG_FILE: json.dumps(to_dict(trainer.config), indent=2) + "\n"}
    classes = getattr(trainer.loader, "classes", None)
    if classes is not None:
        files[CLASSES_FILE] = json.dumps(classes) + "\n"
    skipped = getattr(trainer.loader, "skipped", [])
    if skipped:
        files[SKIPPED_FILE] = "".join(f"{printable(path)}\t{reason}\n"
                                      for path, reason in skipped)
    try:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(trainer.run_dir)
        for name, text in files.items():
            atomic_write_text(trainer.run_dir / name, text)
    except OSError as error:
        advice = ("free some space or choose another --out" if error.errno == errno.ENOSPC
                  else "choose another --out")
        raise UserError(f"Cannot write the run folder {trainer.run_dir} "
                        f"({error.strerror or error}); {advice}.") from error


def _check_outside_data(run_dir: Path, config: PretrainConfig) -> None:
    """Refuse a run folder inside the training images or a split of the held-out data: its
    files would become a class of images there."""
    held_out = config.knn_data or held_out_data(config.data)
    splits = [Path(held_out) / split for split in ("train", *VAL_SPLITS)] if held_out else []
    for data in (Path(config.data), *splits):
        if data.is_dir() and run_dir.resolve().is_relative_to(data.resolve()):
            raise UserError(f"The run folder {run_dir} is inside the data folder {data}, where "
                            "its files would become part of the dataset; choose an --out "
                            "outside it.")
