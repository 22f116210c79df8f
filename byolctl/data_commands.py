"""`byolctl data ...`: inspecting datasets before training on them."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from byolctl.errors import exits_cleanly
from byolctl.render import console

data_app = typer.Typer(help="Inspect image datasets.", no_args_is_help=True)

FolderArg = Annotated[Path, typer.Argument(help="An image folder: <folder>/<class>/<image>.",
                                           show_default=False)]
JsonOpt = Annotated[Optional[Path], typer.Option(
    "--json", help="Also write the findings as JSON to this file.", show_default=False)]
QuickOpt = Annotated[bool, typer.Option(
    "--quick", help="Read headers only (what pretraining checks) instead of decoding.")]
SHOWN_ROWS = 50


@data_app.command("check", epilog="Example: byolctl data check /datasets/imagenet/train")
@exits_cleanly
def check(folder: FolderArg, json_file: JsonOpt = None, quick: QuickOpt = False):
    """List the files of an image folder that cannot be trained on, and why.

    Exits 0 when every image is usable, 1 when some are not.
    """
    from byol.data.folders import check_folder  # deferred: keeps --help fast

    with console.status(f"Checking {folder} ..."):
        report = check_folder(folder, full=not quick)
    if report.problems:
        table = Table("file", "problem", title=f"{len(report.problems)} problems")
        for path, reason in report.problems[:SHOWN_ROWS]:
            table.add_row(path, reason)
        console.print(table)
        if len(report.problems) > SHOWN_ROWS:
            console.print(f"... and {len(report.problems) - SHOWN_ROWS} more"
                          + (f" (all in {json_file})" if json_file else " (use --json)"))
    console.print(f"{report.images} images in {len(report.classes)} classes; "
                  f"{len(report.problems)} problems.")
    if json_file:
        json_file.write_text(json.dumps({
            "folder": str(folder), "images": report.images, "classes": report.classes,
            "problems": [{"path": p, "reason": r} for p, r in report.problems],
        }, indent=2) + "\n")
    if report.problems:
        raise typer.Exit(1)
