"""`byolctl data ...`: checking datasets, and writing them as shards."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from byol.config import AT_LEAST_1, check_value
from byol.errors import plural
from byolctl.errors import exits_cleanly
from byolctl.options import JsonOpt, LogEveryOpt, log_every_seconds, write_json
from byolctl.render import console, task_progress
from byolctl.tables import identifier_column, print_table

data_app = typer.Typer(help="Check image datasets and write them as shards.",
                       no_args_is_help=True)

FolderArg = Annotated[Path, typer.Argument(help="An image folder: <folder>/<class>/<image>.",
                                           show_default=False)]
QuickOpt = Annotated[bool, typer.Option(
    "--quick", help="Only the quick check pretraining does, instead of decoding.")]
SHOWN_ROWS = 50


@data_app.command("check", short_help="List the files of an image folder that cannot be used.",
                  epilog="Example: byolctl data check /datasets/imagenet/train")
@exits_cleanly
def check(folder: FolderArg, json_file: JsonOpt = None, quick: QuickOpt = False,
          log_every: LogEveryOpt = None):
    """List the files of an image folder that cannot be trained on, and why.

    Exits 0 when every image is usable, 1 when some are not.
    """
    from byol.data.folders import check_folder, printable  # deferred: keeps --help fast

    with task_progress(log_every_seconds(log_every), f"Checking {folder} ...") as on_progress:
        report = check_folder(folder, full=not quick, on_progress=on_progress)
    if report.problems:
        # Paths relative to the folder, so that a row is short and pastes after `cd FOLDER`.
        table = Table(identifier_column(f"file in {printable(str(folder))}"), "problem",
                      title=plural(len(report.problems), "problem"))
        for path, reason in report.problems[:SHOWN_ROWS]:
            table.add_row(Text(printable(path, folder)), Text(reason))
        print_table(table)
        if len(report.problems) > SHOWN_ROWS:
            console.print(f"... and {len(report.problems) - SHOWN_ROWS} more"
                          + (f" (all in {json_file})" if json_file else " (use --json)"))
    console.print(f"{plural(report.images, 'image')} in {plural(len(report.classes), 'class')}; "
                  f"{plural(len(report.problems), 'problem')}.")
    if json_file:
        write_json(json_file, {
            "folder": str(folder), "images": report.images, "classes": report.classes,
            "problems": [{"path": p, "reason": r} for p, r in report.problems],
        })
    if report.problems:
        raise typer.Exit(1)


DestinationArg = Annotated[Path, typer.Argument(help="A new, empty folder for the shards.",
                                                show_default=False)]
ShardSizeOpt = Annotated[int, typer.Option("--shard-size", help="Images per shard.")]


@data_app.command("prepare", short_help="Write an image folder as WebDataset tar shards.",
                  epilog="Example: byolctl data prepare /datasets/imagenet/train /fast/in1k-shards")
@exits_cleanly
def prepare(folder: FolderArg, destination: DestinationArg, shard_size: ShardSizeOpt = 10_000,
            log_every: LogEveryOpt = None):
    """Write an image folder as WebDataset tar shards, for data too large for many small files.

    Train on them with --data DESTINATION (all shards) or a quoted pattern such as
    'DESTINATION/shard-{000000..000009}.tar' (unquoted, the shell expands the braces).
    Unreadable images are left out and listed.
    """
    from byol.data.shards import prepare_shards  # deferred: keeps --help fast

    check_value(shard_size, AT_LEAST_1, "--shard-size")  # before anything is read or written
    seconds = log_every_seconds(log_every)
    with task_progress(seconds, f"Writing shards of {folder} to {destination} ...") as on_progress:
        shards = prepare_shards(folder, destination, shard_size, on_progress=on_progress)
    console.print(f"Wrote {plural(shards.images, 'image')} of "
                  f"{plural(len(shards.classes), 'class')} in {plural(len(shards.paths), 'shard')} "
                  f"to {destination}.")
    if shards.skipped:
        console.print(f"Left out {plural(len(shards.skipped), 'file')} that cannot be trained "
                      f"on (with the reason for each) listed in {destination / 'manifest.json'}.")
