"""Checkpoints: written atomically, loaded as data only (`weights_only=True`).

A run folder keeps the newest `keep` step checkpoints and last.pt, a second name for the
newest (see `byol.run_folder`). Every file byolctl writes whole (checkpoints, exports, JSON
results) goes through `atomic_save` or `atomic_write_text`, which turn a failed write, a full
disk above all, into a `WriteError` and leave the file already there as it was.
"""

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from byol.errors import UserError
from byol.run_folder import (
    LAST,
    METRICS_FILE,
    STEP_DIR,
    checkpoint_file,
    checkpoint_run_dir,
    step_checkpoint,
)

FORMAT = "byolctl-pretrain"
VERSION = 1

# ------------------------------------------------------------------------- failed writes

# A full disk, as the OSError's errno says, or as the words of a message without one (Rust
# writers such as safetensors' quote the system's message).
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_DISK_WORDS = tuple(os.strerror(code) for code in FULL_DISK_ERRNOS)
# torch's zip writer reports a failed write of a file it opened itself in its own words, with
# no errno (e.g. "[enforce fail at inline_container.cc:672] . unexpected pos 51072 vs 50966").
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed writing file", "unexpected pos",
                        "file write failed")
# A write that failed with less than this left on its disk failed for want of space: it had
# taken the rest (writes fail on the block that does not fit).
NEARLY_FULL_BYTES = 1 << 20


class WriteError(UserError):
    """A file could not be written: its disk is full (`full`), or the folder is gone or not
    writable. The files already there are as they were."""

    def __init__(self, path: Path | None, full: bool, reason: str):
        self.path, self.full, self.reason = path, full, reason
        if full:
            disk = f"the disk holding {disk_of(path.parent)}" if path else "the disk"
            written = f"{path.name} was not written" if path else "a file was not written"
            message = (f"No space left: {disk} is full ({reason}); {written}, and files "
                       "already written are intact. Free some space and run the command again.")
        else:
            message = (f"Could not write {path or 'a file'} ({reason}); files already written "
                       "are intact. Make its folder writable and run the command again.")
        super().__init__(message)


def write_error(error: BaseException, path: Path | None = None) -> WriteError | None:
    """`error`, raised while writing `path` (or a file the caller does not know), as a
    WriteError; None when it is no failed write (a Ctrl-C as it unwinds, a bug).

    A full disk is recognised by the errno anywhere in the exception's chain, by the system's
    words for it, or, where torch's writer hides the errno, by `path`'s disk having (almost)
    no space left. Call it before removing what the failed write left, which frees that space.
    """
    if isinstance(error, WriteError):
        return error
    chain = _exception_chain(error)
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return None
    os_errors = [e for e in chain if isinstance(e, OSError)]
    texts = [str(e) for e in chain]
    torch_failed = any(isinstance(e, RuntimeError) and words in str(e)
                       for e in chain for words in TORCH_WRITE_FAILURES)
    full = (any(e.errno in FULL_DISK_ERRNOS for e in os_errors)
            or any(words in text for words in FULL_DISK_WORDS for text in texts))
    if not (os_errors or torch_failed or full):
        return None
    full = full or (path is not None and _nearly_full(path.parent))
    reason = next((e.strerror for e in os_errors if e.strerror), None)
    return WriteError(path, full, reason or _first_line(error))


def disk_of(folder: Path) -> str:
    """`folder`, and the mount point of its disk where that is another folder: what a user
    frees space on."""
    shown = Path.cwd() if folder == Path() else folder
    mount = folder.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    return str(shown) if mount == folder.resolve() else f"{shown} (mounted at {mount})"


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _exception_chain(error: BaseException) -> list[BaseException]:
    """`error`, then what it was raised from or while handling, and so on."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def _written_in_place_of(path: Path, tmp: Path):
    """Around writing `tmp` and renaming it to `path`: `tmp` is removed whatever happens, and
    a failed write is a WriteError (judged while `tmp` still holds what was written)."""
    try:
        yield
    except BaseException as error:
        failed = write_error(error, path)
        if failed is None:
            raise
        raise failed from error
    finally:
        tmp.unlink(missing_ok=True)

# ------------------------------------------------------------------------- atomic writes


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
    with _written_in_place_of(path, tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file whole or not at all: to a temporary file, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with _written_in_place_of(path, tmp):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def _replace_with_link(source: Path, dest: Path) -> None:
    """Atomically make `dest` a second name for `source` (a copy where links are not allowed)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    with _written_in_place_of(dest, tmp):
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
        raise UserError(f"{path} is not a loadable checkpoint ({type(error).__name__}); "
                        f"{_instead_of(path)}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a byolctl pretraining checkpoint.")
    if state.get("version") != VERSION:
        raise UserError(
            f"{path} has checkpoint version {state.get('version')}, this byolctl reads "
            f"version {VERSION}; use the byolctl release that wrote it."
        )
    return state


def _instead_of(damaged: Path) -> str:
    """What to load instead of a checkpoint that does not load: the newest intact step
    checkpoint of its run folder (last.pt shares its file with the newest one, so a damaged
    last.pt usually means an older one), or any file byolctl pretrain wrote."""
    step_files = sorted((checkpoint_run_dir(damaged) / STEP_DIR).glob("step-*.pt"),
                        key=_step_of, reverse=True)
    for candidate in step_files:
        if not candidate.samefile(damaged) and _loads(candidate):
            return (f"the newest intact checkpoint beside it is {candidate}: resume with "
                    f"byolctl pretrain --resume {candidate}, or pass it to eval or export.")
    return "pass a .pt file written by byolctl pretrain."


def _loads(path: Path) -> bool:
    """Whether `path` loads whole as one of our checkpoints (every tensor read, not only the
    index `saved_step` reads)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


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
        """Turn a failed write into the run folder (a full disk, a lost mount), however torch
        or the system reports it, into a UserError that names the disk, the checkpoint to
        resume from and the command that does. The files already there stay whole:
        checkpoints are written beside them and renamed into place."""
        try:
            yield
        except BaseException as error:
            # Metrics and TensorBoard events go to files of the run folder too.
            failed = write_error(error, self.run_dir / METRICS_FILE)
            if failed is None:
                raise
            raise UserError(self._cannot_write(failed)) from error

    def _cannot_write(self, failed: WriteError) -> str:
        if failed.full:
            problem = (f"No space left: the disk holding the run folder {disk_of(self.run_dir)} "
                       f"is full ({failed.reason})")
            fix = "Free some space"
        else:
            problem = f"Could not write to the run folder {self.run_dir} ({failed.reason})"
            fix = "Make it writable"
        if self.saved_step is None:
            return (f"{problem}; {self.last_good()}. {fix}, then start the run again: the same "
                    "command with --resume auto.")
        return (f"{problem}; {self.last_good()}. {fix}, then resume with: byolctl pretrain "
                f"--resume auto --out {self.run_dir}")
