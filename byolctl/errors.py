"""How commands end on errors: one line and an exit status, or a traceback with --debug."""

import functools

import typer

from byol.errors import UserError
from byolctl import INTERRUPTED
from byolctl.render import print_error

# Set by `byolctl --debug`.
show_tracebacks = False


def exits_cleanly(command):
    """Turn errors into one line and an exit status: 2 for bad input, 1 for anything else.

    A command that finishes leaves its torchrun process group, as every rank does then. One
    that fails does not: other ranks may wait in a collective, and leaving could hang; the
    process exits, and torchrun stops the rest."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            result = command(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as error:
            if show_tracebacks:
                raise
            print_error(str(error))
            raise typer.Exit(2)
        except KeyboardInterrupt:
            print_error(INTERRUPTED)
            raise typer.Exit(1)
        except Exception as error:
            if show_tracebacks:
                raise
            if _caused_by_ctrl_c(error):  # e.g. torch.save's writer failing as it unwinds
                print_error(INTERRUPTED)
                raise typer.Exit(1) from None
            full_disk = _full_disk(error)
            if full_disk is not None:
                print_error(str(full_disk))
                raise typer.Exit(2)
            if type(error).__name__ == "OutOfMemoryError":  # torch's, without importing torch
                print_error("Out of GPU memory; run again with a smaller --batch-size.")
                raise typer.Exit(2)
            first_line = (str(error).strip().splitlines() or [""])[0]
            print_error(f"{first_line} ({type(error).__name__}; rerun with --debug for details)")
            raise typer.Exit(1)
        from byol import distributed  # loaded by then: every command runs on torch

        distributed.leave()
        return result

    return wrapper


def _full_disk(error: Exception):
    """A full disk met by a write that does not report its own failures (a data shard, another
    library's writer), as a WriteError; None for anything else. (byolctl's own writes say
    which file and disk: see byol.checkpoint.WriteError.)"""
    from byol.checkpoint import write_error  # loaded by then: every command runs on torch

    failed = write_error(error)
    return failed if failed is not None and failed.full else None


def _caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether `error` was raised while a KeyboardInterrupt was being handled."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__context__
    return False
