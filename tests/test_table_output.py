"""Tables written to a pipe or a file, where rich assumes 80 columns: every path and name
stays whole on one line, so that `grep NAME log` finds it and a person can paste it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table
from typer.testing import CliRunner

from byolctl.cli import app
from byolctl.render import console
from byolctl.tables import identifier_column, print_table
from tests.conftest import REPO

CORPUS = REPO / "tests" / "corpus" / "images"
LONG = "a-rather-long-name-that-keeps-going-" * 3  # 108 characters
runner = CliRunner()


@pytest.fixture
def narrow(monkeypatch):
    """The console as in a pipe with COLUMNS=80 (CliRunner's output is not a terminal)."""
    monkeypatch.setattr(console, "width", 80)


def _whole_on_one_line(text: str, identifiers: list[str]) -> None:
    lines = text.splitlines()
    broken = [name for name in identifiers if not any(name in line for line in lines)]
    assert not broken, f"split over lines: {broken}\n{text}"


def test_data_check_into_a_file_keeps_every_path_on_one_line(tmp_path):
    root = tmp_path / f"images-{LONG}"
    folder = root / f"class-{LONG}"
    folder.mkdir(parents=True)
    for name in ("pattern-0.jpg", "pattern-1.jpg"):
        shutil.copy(CORPUS / "good" / name, folder)
    shown = []
    for name in ("truncated.jpg", "text.jpg", "zero-bytes.jpg"):
        target = f"{LONG}{name}"
        shutil.copy(CORPUS / "broken" / name, folder / target)
        shown.append(f"{folder.name}/{target}")
    log = tmp_path / "log"
    with log.open("w") as out:  # a file: not a terminal
        subprocess.run([sys.executable, "-m", "byolctl", "data", "check", str(root)],
                       stdout=out, stderr=subprocess.DEVNULL, cwd=REPO,
                       env={**os.environ, "COLUMNS": "80"}, check=False)
    text = log.read_text()
    assert "3 problems" in text
    # Paths relative to the folder checked, which the header names.
    _whole_on_one_line(text, [*shown, f"file in {root}"])
    assert not any(line.startswith(f"│ {root}") for line in text.splitlines())


def test_evaluation_table_into_a_pipe_keeps_every_path_on_one_line(narrow, tmp_path):
    out = tmp_path / f"run-{LONG}"
    flags = ["--arch", "resnet18", "--image-size", "16", "--batch-size", "4", "--steps", "1",
             "--workers", "1", "--device", "cpu", "--knn-every", "0", "--no-probe"]
    assert runner.invoke(app, ["pretrain", *flags, "--out", str(out)]).exit_code == 0
    data = tmp_path / f"eval-{LONG}"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
            for i in range(2):
                shutil.copy(CORPUS / "good" / f"pattern-{i}.jpg", data / split / name)
    result = runner.invoke(app, ["eval", "knn", "--checkpoint", str(out / "last.pt"),
                                 "--data", str(data), "--k", "3", "--batch-size", "4",
                                 "--workers", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    _whole_on_one_line(result.output, [str(data), str(out / "last.pt")])  # title, encoder row


def test_identifier_columns_and_long_titles_never_wrap(narrow, capsys):
    paths = [f"{LONG}/{LONG}/image-{i}.jpg" for i in range(3)]
    table = Table(identifier_column("file"), "problem", title=f"checked {LONG}{LONG}")
    for path in paths:
        table.add_row(path, "a reason long enough to be wrapped by rich if it had to be, "
                            "which it need not be here")
    print_table(table)
    text = capsys.readouterr().out
    _whole_on_one_line(text, [*paths, f"checked {LONG}{LONG}"])
    assert len(text.splitlines()) == 3 + 4 + 1  # each row on one line


def test_a_path_that_looks_like_markup_is_shown_as_it_is(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    shutil.copy(CORPUS / "good" / "pattern-0.jpg", root / "a")
    (root / "a" / "[bold]notes.txt").write_text("not an image\n")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert "a/[bold]notes.txt" in result.output
    assert Path(root / "a" / "[bold]notes.txt").is_file()
