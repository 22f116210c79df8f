"""byolctl: the command line of the byol library (Typer + rich)."""

import signal
import sys

from byol import __version__
from byol.errors import WrongModuleError

__all__ = ["__version__", "main"]

# Every write is to a temporary file then renamed, so the files already there stay whole.
INTERRUPTED = "Interrupted; nothing more was written."


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    """The `byolctl` command. Loading torch takes seconds; a Ctrl-C or a SIGTERM meanwhile
    ends the command as it does later, with one line and status 1, not a traceback or a
    silent death. So does an installation whose `kernels` is another project's (found while
    the command's modules load)."""
    # First of all: a scheduler may stop a job the moment it starts.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from byolctl.cli import main as run_command

        run_command()
    # Commands end their own interruptions (byolctl.errors): this one came before, while the
    # modules loaded or the command line was being built.
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED}", file=sys.stderr)
        raise SystemExit(1) from None
    except WrongModuleError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
