"""The run folder: one name for each file a run keeps, and the run a checkpoint belongs to.

    runs/<arch>-<date>-<time>/
        config.json                  the resolved config
        classes.json                 class names of labeled data
        skipped_files.txt            unreadable images, one `path<TAB>reason` a line
        metrics.jsonl                one JSON record per logged step
        tensorboard/                 the same metrics as TensorBoard events
        last.pt                      the newest checkpoint, always loadable
        checkpoints/step-0001000.pt  the newest step checkpoints
        evaluations.jsonl            one JSON record per `byolctl eval` of its checkpoints
        linear-eval.pt               the state of an unfinished `eval linear --protocol full`

Files are written whole as `.NAME.tmp` beside their final name, then renamed (see
`byol.checkpoint.atomic_save`); a process killed meanwhile leaves its `.NAME.tmp` behind.
"""

from datetime import datetime
from pathlib import Path

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
SKIPPED_FILE = "skipped_files.txt"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LAST = "last.pt"
STEP_DIR = "checkpoints"
EVALUATIONS_FILE = "evaluations.jsonl"
LINEAR_STATE_FILE = "linear-eval.pt"


def default_run_dir(arch: str) -> Path:
    """runs/<arch>-<date>-<time>."""
    return RUNS_ROOT / f"{arch}-{datetime.now():%Y%m%d-%H%M%S}"


def step_checkpoint(run_dir: Path, step: int) -> Path:
    """checkpoints/step-NNNNNNN.pt of `run_dir`."""
    return run_dir / STEP_DIR / f"step-{step:07d}.pt"


def checkpoint_file(path: Path) -> Path:
    """The checkpoint file a path names: itself, or a run folder's last.pt."""
    return path / LAST if path.is_dir() else path


def checkpoint_run_dir(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (last.pt sits in it, step files one below):
    found through the real path, and spelled as the user spelled the checkpoint where that
    names the same folder (not through `.` inside it, or a link)."""
    if checkpoint.is_dir():
        return checkpoint

    def run_of(path: Path) -> Path:
        return path.parent.parent if path.parent.name == STEP_DIR else path.parent

    home, spelled = run_of(checkpoint.resolve()), run_of(checkpoint)
    return spelled if spelled.resolve() == home else home


def remove_leftovers(run_dir: Path) -> None:
    """Remove the temporary files that writes killed midway left in `run_dir` and its
    checkpoints/ (a step checkpoint's can be as large as a checkpoint, on a disk that may be
    full already). Call it as a run starts there, when nothing else writes to the folder."""
    for folder in (run_dir, run_dir / STEP_DIR):
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def holds_run(run_dir: Path) -> bool:
    """Whether a folder already holds (part of) a run."""
    return any((run_dir / name).exists() for name in (LAST, CONFIG_FILE, METRICS_FILE))
