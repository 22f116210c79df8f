"""Tables a person can grep and paste from: a path or a name in a table stays on one line.

Rich fits a table to the terminal, and to 80 columns when the output goes to a pipe or a
file, by wrapping cells; a path split over two lines is found by no grep. Here identifier
columns never wrap, and a table out of a terminal is as wide as its longest row.
"""

import copy

from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Column, Table

from byolctl.render import console

# Wide enough to measure any table without squeezing it.
_UNLIMITED = 1_000_000


def identifier_column(header: str, **kwargs) -> Column:
    """A column of paths or names: never wrapped, folded or cut."""
    return Column(header, no_wrap=True, overflow="ignore", **kwargs)


def print_table(table: Table) -> None:
    """Print `table` with its identifier columns whole: in a terminal as narrow as they allow
    (other columns wrap to fit the screen), in a pipe or a file with each row on one line. A
    title wider than the table (one naming a folder, say) goes on a line of its own above it,
    where rich would wrap or cut it."""
    natural = Measurement.get(console, console.options.update(width=_UNLIMITED), table)
    width = max(console.width, natural.minimum) if console.is_terminal else natural.maximum
    title = table.title
    if title is not None and console.render_str(title).cell_len > min(width, natural.maximum):
        console.print(title, highlight=False)
        table = copy.copy(table)
        table.title = None
    lines = console.render_lines(table, console.options.update(width=width), new_lines=True)
    console.print(Segments(segment for line in lines for segment in line))
