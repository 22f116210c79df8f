"""The documentation points at things that exist: every relative link reaches a file (and a
heading, for a #anchor), every command-line flag is an option of the program it is given to,
and the README stays a short read.

    pytest tests/test_docs.py -q
"""

import argparse
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from unittest import mock

import pytest
import typer

import byolctl.cli

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md")), RESULTS]
README_MAX_LINES = 210

# Flags of programs other than byolctl and the benchmark scripts that the documents use.
OTHER_PROGRAMS = {
    "torchrun": {"--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint",
                 "--rdzv-id"},
    "srun": set(),
    "#SBATCH": {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--signal"},
    "tensorboard": {"--logdir"},
    "pip": set(),
    "pytest": set(),
    "git": set(),
}

FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
COMMENT = re.compile(r"(?:^|\s)#(?![!\w])")
SCRIPT = re.compile(r"^(?:benchmarks/)?(\w+)\.py$")


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---------------------------------------------------------------- reading markdown


def split_markdown(text: str) -> tuple[list[str], list[list[str]]]:
    """The prose lines (code blocks blanked out, so line numbers keep) and the code blocks."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces as
    dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_markdown(path.read_text())
    seen: dict[str, int] = {}
    result = set()
    for line in prose:
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(result)


def broken_links(path: Path) -> list[str]:
    prose, _ = split_markdown(path.read_text())
    problems = []
    for number, line in enumerate(prose, 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            destination = (path.parent / file_part).resolve() if file_part else path
            where = f"{relative(path)}:{number}: {target}"
            if not destination.is_relative_to(REPO):
                problems.append(f"{where} leaves the project")
            elif not destination.exists():
                problems.append(f"{where}: no such file")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                problems.append(f"{where}: no heading with that anchor in "
                                f"{relative(destination)}")
    return problems


# ---------------------------------------------------------------- the options that exist


@cache
def byolctl_commands() -> dict[tuple[str, ...], frozenset[str]]:
    """Each byolctl command path (() for the root, ("eval", "knn"), ...) -> its options."""
    commands = {}

    def walk(command, path):
        options = {"--help"}
        for param in command.params:
            options.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        commands[path] = frozenset(options)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(byolctl.cli.app), ())
    return commands


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@cache
def script_options(name: str) -> frozenset[str]:
    """The options of benchmarks/NAME.py: its main() is run until it parses its arguments,
    and the parser is kept instead."""
    path = REPO / "benchmarks" / f"{name}.py"
    module_name = f"_docs_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[module_name] = module

    def keep_parser(parser, *args, **kwargs):
        raise _Parsed(parser)

    try:
        spec.loader.exec_module(module)
        with mock.patch.object(argparse.ArgumentParser, "parse_args", keep_parser):
            module.main()
    except _Parsed as parsed:
        return frozenset(parsed.parser._option_string_actions)
    finally:
        sys.path[:] = saved_path
        del sys.modules[module_name]
    raise AssertionError(f"{relative(path)}'s main() parsed no arguments")


def scripts() -> list[str]:
    return sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))


@cache
def every_option() -> frozenset[str]:
    """The flags a sentence may name without naming their program."""
    options = set().union(*byolctl_commands().values(), *OTHER_PROGRAMS.values())
    for name in scripts():
        options |= script_options(name)
    return frozenset(options)


# ---------------------------------------------------------------- checking flags


def unknown_flags_in_command(text: str) -> list[str]:
    """The flags in `text` (a command line, or a code span) that the program they follow does
    not have; flags before any known program are checked against every option."""
    if text.lstrip().startswith("#SBATCH"):
        return [f for f in FLAG.findall(text) if f not in OTHER_PROGRAMS["#SBATCH"]]
    allowed, command_path = every_option(), None
    unknown = []
    for raw in text.split():
        token = raw.strip("()[],;:'\"")
        script = SCRIPT.match(token)
        if token == "byolctl":
            command_path = ()
            allowed = byolctl_commands()[command_path]
        elif script and (REPO / "benchmarks" / f"{script.group(1)}.py").is_file():
            command_path, allowed = None, script_options(script.group(1)) | {"--help"}
        elif token in OTHER_PROGRAMS:
            command_path, allowed = None, OTHER_PROGRAMS[token]
        elif command_path is not None and (*command_path, token) in byolctl_commands():
            command_path = (*command_path, token)
            allowed = byolctl_commands()[command_path]
        unknown += [flag for flag in FLAG.findall(raw) if flag not in allowed]
    return unknown


def code_lines(block: list[str]) -> list[str]:
    """A code block's command lines, with continued lines (a trailing backslash, or an
    indented line of options) joined and comments as lines of their own."""
    lines: list[str] = []
    continued = False
    for line in block:
        if continued or (lines and re.match(r"\s+[\[-]", line)):
            lines[-1] += " " + line
        else:
            lines.append(line)
        continued = line.rstrip().endswith("\\")
    result = []
    for line in lines:
        comment = None if line.lstrip().startswith("#SBATCH") else COMMENT.search(line)
        if comment:
            result += [line[:comment.start()], line[comment.end():]]
        else:
            result.append(line)
    return result


def unknown_flags(text: str) -> list[str]:
    """Each flag in a markdown text that the program it is given to does not have."""
    prose, blocks = split_markdown(text)
    unknown = []
    for number, line in enumerate(prose, 1):
        for _, span in CODE_SPAN.findall(line):
            unknown += [f"line {number}: {flag}" for flag in unknown_flags_in_command(span)]
        outside = CODE_SPAN.sub(" ", line)
        unknown += [f"line {number}: {flag}" for flag in FLAG.findall(outside)
                    if flag not in every_option()]
    for block in blocks:
        for line in code_lines(block):
            unknown += [f"{flag} in: {line.strip()}" for flag in unknown_flags_in_command(line)]
    return unknown


# ---------------------------------------------------------------- the tests


def test_readme_is_a_short_read():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail to docs/")


def test_docs_folder_has_an_index():
    assert (REPO / "docs" / "README.md").is_file()


@pytest.mark.parametrize("path", DOCUMENTS, ids=relative)
def test_relative_links_reach_a_file_and_heading(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=relative)
def test_every_flag_exists(path):
    assert unknown_flags(path.read_text()) == [], (
        f"{relative(path)} names flags its program does not have")


def test_an_unknown_flag_is_caught_wherever_it_is_written():
    text = "\n".join([
        "Prose with --no-such-flag in it.",
        "A span: `--no-such-flag`; a command: `byolctl pretrain --no-such-flag`.",
        "```",
        "byolctl pretrain --arch resnet18 \\",
        "    --no-such-flag",
        "byolctl export --protocol cached     # a flag of another command",
        "python benchmarks/bench_step.py --no-such-flag",
        "torchrun --nproc-per-node 8 --no-such-flag -m byolctl pretrain",
        "byolctl pretrain      # a comment naming --no-such-flag",
        "```",
    ])
    found = unknown_flags(text)
    assert len(found) == 8, found
    assert sum("--protocol" in f for f in found) == 1


def test_known_flags_pass_in_their_programs():
    text = "\n".join([
        "`byolctl eval linear --protocol cached --resume` and `bench_quality.py --lars-eta 1e9`",
        "```",
        "torchrun --nnodes 2 --rdzv-id r50 -m byolctl pretrain --small-stem --no-blur",
        "byolctl data check DIR [--json FILE] [--quick]",
        "python benchmarks/bench_kernels.py --no-compile",
        "```",
    ])
    assert unknown_flags(text) == []


def test_a_broken_link_or_anchor_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# A `code` heading: yes\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#a-code-heading-yes) [ok](other.md#twice-1) [ok](#here)\n"
                   "[bad](missing.md) [bad](other.md#nowhere) [ok](https://example.org)\n"
                   "# Here\n```\n[not a link](nothing.md)\n```\n")
    problems = broken_links(doc)
    assert len(problems) == 2, problems
