"""byolctl: the command line of the byol library (Typer + rich)."""

import sys

from byol import __version__

__all__ = ["__version__", "main"]

# Every write is to a temporary file then renamed, so the files already there stay whole.
INTERRUPTED = "Interrupted; nothing more was written."


def main() -> None:
    """The `byolctl` command. Loading torch takes seconds; a Ctrl-C meanwhile ends the command
    as it does later, with one line and status 1, not a traceback. So does an installation
    whose `kernels` is another project's (found while the command's modules load)."""
    from byol.errors import WrongModuleError

    try:
        from byolctl.cli import main as run_command
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED}", file=sys.stderr)
        raise SystemExit(1) from None
    except WrongModuleError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    run_command()
