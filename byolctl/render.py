"""Everything the terminal shows: the progress bar, summaries, errors."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(soft_wrap=True)
error_console = Console(stderr=True)


def training_progress() -> Progress:
    """step/total, loss, collapse signal and images/s, updated about once a second."""
    return Progress(
        TextColumn("[bold]pretrain"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}"),
        TextColumn("std [cyan]{task.fields[std]}"),
        TextColumn("[green]{task.fields[speed]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def plural(count: int, noun: str) -> str:
    """"1 image", "2 images", "3 classes"."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith('s') else 's'}"


def print_error(message: str) -> None:
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    error_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
