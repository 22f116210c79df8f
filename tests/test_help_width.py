"""--help reads well in an 80-column terminal: every option's description gets a column of at
least 40 characters, none is broken into slivers, nothing is cut, and every flag is shown."""

import re

import pytest
import typer.main
from typer.testing import CliRunner

from byolctl.cli import app

runner = CliRunner()
COMMANDS = [("pretrain",), ("eval", "knn"), ("eval", "linear"), ("profile",),
            ("data", "check"), ("data", "prepare"), ("export",)]
DESCRIPTION_COLUMN = 40  # characters at least, for every option's description
# An option line: two spaces, the flags (and metavar), two or more spaces, the description.
OPTION_LINE = re.compile(r"^(\s*-{1,2}\w.*?\S)(\s{2,})(\S.*)$")


def _help(command: tuple[str, ...], columns: int) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _descriptions(output: str) -> dict[str, list[str]]:
    """The lines of each option's description, keyed by the option's first flag, with the
    column each starts at; from the Options section of the help."""
    options: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in output.split("Options:", 1)[1].splitlines():
        match = OPTION_LINE.match(line)
        if match:
            current = match.group(1).split()[0]
            options[current] = [(len(match.group(1)) + len(match.group(2)), match.group(3))]
        elif current and line.strip():
            options[current].append((len(line) - len(line.lstrip()), line.strip()))
        else:
            current = None  # a blank line ends the section's option
    return options


def _flags(command: tuple[str, ...]) -> list[str]:
    click_command = typer.main.get_command(app)
    for name in command:
        click_command = click_command.commands[name]
    return [flag for param in click_command.params
            for flag in (*param.opts, *getattr(param, "secondary_opts", ()))
            if flag.startswith("-")]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_description_gets_a_wide_column_and_every_flag_shows(command, columns):
    output = _help(command, columns)
    assert max(map(len, output.splitlines())) <= columns
    assert "…" not in output and "\\[" not in output  # nothing cut, no markup escapes shown
    assert "Options:" in output, output  # plain help: rich's boxed table squeezed them
    options = _descriptions(output)
    for flag in _flags(command):
        assert re.search(rf"(^|\s){re.escape(flag)}(\s|,|$)", output, re.M), flag
    assert options, output
    for flag, lines in options.items():
        for start, _ in lines:
            assert columns - start >= DESCRIPTION_COLUMN, (flag, lines)
        # Wrapped lines are full: only an option's last line may be short.
        slivers = [text for _, text in lines[:-1] if len(text) < 30]
        assert not slivers, (flag, lines)


@pytest.mark.parametrize("group", [(), ("eval",), ("data",)],
                         ids=lambda group: " ".join(group) or "byolctl")
def test_command_lists_show_each_summary_whole(group):
    listing = _help(group, 80).split("Commands:", 1)[1]
    summaries = [line for line in listing.splitlines() if line.strip()]
    assert summaries and not any(line.endswith("...") for line in summaries), listing
