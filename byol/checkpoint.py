"""Checkpoints: written atomically, loaded as data only (`weights_only=True`).

A run folder keeps the newest `keep` step checkpoints and last.pt, a second name for the
newest (see `byol.run_folder`).
"""

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from byol.errors import UserError
from byol.run_folder import LAST, STEP_DIR, checkpoint_file, step_checkpoint

FORMAT = "byolctl-pretrain"
VERSION = 1


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, flush it to disk, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file whole or not at all: to a temporary file, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_with_link(source: Path, dest: Path) -> None:
    """Atomically make `dest` a second name for `source` (a copy where links are not allowed)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write `state` as checkpoints/step-NNNNNNN.pt and make last.pt a second name for it.

    Keeps the newest `keep` step files (last.pt names the newest). Returns the path of last.pt.
    """
    step_dir = run_dir / STEP_DIR
    step_dir.mkdir(parents=True, exist_ok=True)
    step_path = step_checkpoint(run_dir, step)
    atomic_save({"format": FORMAT, "version": VERSION, **state}, step_path)
    last = run_dir / LAST
    _replace_with_link(step_path, last)
    step_files = sorted(step_dir.glob("step-*.pt"), key=_step_of)
    # Files of later steps belong to an abandoned continuation (this run resumed from an
    # older checkpoint): they go, then all but the newest `keep`.
    earlier = [path for path in step_files if _step_of(path) <= step]
    for old in [path for path in step_files if _step_of(path) > step] + earlier[:-keep]:
        old.unlink()
    return last


def _step_of(path: Path) -> int:
    return int(path.stem.removeprefix("step-"))


def saved_step(path: Path) -> int | None:
    """The step a checkpoint file holds, read without loading its tensors; None if it cannot
    be read."""
    try:
        return int(torch.load(path, mmap=True, weights_only=True, map_location="cpu")["step"])
    except Exception:
        return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a pretraining checkpoint on the CPU; UserError if it is missing or not ours."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise UserError(f"No checkpoint at {path}; pass a run folder or a .pt file it holds.")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise UserError(
            f"{path} is not a loadable checkpoint ({type(error).__name__}); "
            "pass a .pt file written by byolctl pretrain."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a byolctl pretraining checkpoint.")
    if state.get("version") != VERSION:
        raise UserError(
            f"{path} has checkpoint version {state.get('version')}, this byolctl reads "
            f"version {VERSION}; use the byolctl release that wrote it."
        )
    return state


class Checkpointer:
    """A run's checkpoints: when one is due, writing it (rank 0), and where the last good one
    is, for every message about a run that cannot go on."""

    def __init__(self, run_dir: Path, every: int, keep: int, is_main: bool):
        self.run_dir, self.every, self.keep, self.is_main = run_dir, every, keep, is_main
        self.saved_step: int | None = None  # the step of this run's newest checkpoint

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after `step` steps (one is also written at the end)."""
        return step % self.every == 0

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write `state` (every rank's part already gathered) as the checkpoint of `step`;
        returns the path of last.pt. A failed write is a UserError (see `writing`)."""
        if self.is_main:
            with self.writing():
                save_checkpoint(state, self.run_dir, step, self.keep)
        self.saved_step = step
        return self.run_dir / LAST

    @property
    def last(self) -> Path | None:
        """last.pt, once this run has written a checkpoint."""
        return self.run_dir / LAST if self.saved_step is not None else None

    def last_good(self) -> str:
        """Where the newest checkpoint of this run is, for error messages."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {self.run_dir / LAST} (step {self.saved_step})"

    @contextlib.contextmanager
    def writing(self):
        """Turn a failed write into the run folder (a full disk, a lost mount) into a
        UserError that names the checkpoint to resume from. The files already there stay
        whole: checkpoints are written beside them and renamed into place."""
        try:
            yield
        except OSError as error:
            raise UserError(f"Could not write to the run folder {self.run_dir} "
                            f"({error.strerror or error}); {self.last_good()}. Free some space "
                            "and resume with --resume auto --out "
                            f"{self.run_dir}.") from error
