"""Odd dataset trees, built in a temporary folder: a decompression bomb (a small PNG whose
header announces 20000 x 20000 pixels), a file name that is not UTF-8, a link to a parent
folder, and a damaged JPEG the checks before reading miss. Each is named and skipped (or, for
the last, stops the command in one line that says how to find it), with no traceback, and
nothing already written is changed. docs/data.md#odd-trees says what byolctl does with each."""

import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path
from unittest import mock

import pytest
import torch
from typer.testing import CliRunner

import byol.data.labeled
from byol.data.dali import folder_loader
from byol.data.folders import image_problem, scan_image_folder
from byolctl.cli import app
from tests.conftest import REPO

GOOD = REPO / "tests" / "corpus" / "images" / "good"
BROKEN = REPO / "tests" / "corpus" / "images" / "broken"
TINY_FLAGS = ["--arch", "resnet18", "--image-size", "16", "--batch-size", "4", "--steps", "2",
              "--workers", "1", "--device", "cpu", "--knn-every", "0", "--no-probe"]
EVAL_FLAGS = ["--batch-size", "4", "--workers", "1", "--device", "cpu"]
NOT_UTF8 = b"caf\xe9.jpg"  # Latin-1 bytes of cafe with an accent
runner = CliRunner()


def _tree(root: Path, classes=("a", "b"), per_class: int = 4) -> Path:
    """`root/<class>/<image>.jpg`: `per_class` good JPEGs in each class."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shutil.copy(GOOD / f"pattern-{i}.jpg", root / name / f"{name}{i}.jpg")
    return root


def _bomb_png(side: int = 20_000) -> bytes:
    """A valid-looking PNG of a few bytes whose header says side x side RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _write_not_utf8(folder: Path) -> Path:
    """A good JPEG under a name that is not UTF-8; returns its path as Python sees it."""
    path = os.fsencode(folder) + b"/" + NOT_UTF8
    with open(path, "wb") as f:
        f.write((GOOD / "pattern-5.jpg").read_bytes())
    return Path(os.fsdecode(path))


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file below `folder` (links not followed) and a hash of its bytes."""
    return {os.path.join(parent, name): hashlib.sha256(
                Path(parent, name).read_bytes()).hexdigest()
            for parent, _, names in os.walk(folder) for name in names}


def _output(result) -> str:
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def _row(result, path: str) -> str:
    """The one line of a command's output that shows `path`."""
    lines = [line for line in result.output.splitlines() if f" {path} " in line]
    assert len(lines) == 1, result.output
    return lines[0]


def _fails_cleanly(args: list[str], message: str, env: dict | None = None) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert message in _output(result)
    return _output(result)


@pytest.fixture
def run(demo_checkpoint) -> Path:
    """A finished 2-step run folder to evaluate (the session's shared one)."""
    return demo_checkpoint.parent


# --------------------------------------------------------------------------- decompression bomb

def test_data_check_names_a_decompression_bomb_and_its_pixel_limit(tmp_path):
    root = _tree(tmp_path / "images")
    (root / "a" / "bomb.png").write_bytes(_bomb_png())
    for quick in ([], ["--quick"]):
        result = runner.invoke(app, ["data", "check", str(root), *quick])
        assert result.exit_code == 1, result.output
        assert ("too many pixels (20000x20000, more than 100,000,000; a larger "
                "byolctl --max-pixels allows it)") in _row(result, "a/bomb.png")
        output = _output(result)
        assert "DecompressionBomb" not in output and "decompression bomb DOS" not in output


def test_pretraining_skips_a_decompression_bomb_and_lists_it(tmp_path):
    root = _tree(tmp_path / "images")
    (root / "a" / "bomb.png").write_bytes(_bomb_png())
    before = _fingerprint(root)
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--data", str(root), "--out", "run"])
    assert result.exit_code == 0, result.output
    assert "Skipping 1 file that cannot be trained on" in _output(result)
    assert "bomb.png\ttoo many pixels" in Path("run/skipped_files.txt").read_text()
    assert _fingerprint(root) == before


def test_the_pixel_limit_is_raised_by_its_environment_variable(tmp_path):
    root = _tree(tmp_path / "images")
    bomb = root / "a" / "bomb.png"
    bomb.write_bytes(_bomb_png())
    assert "too many pixels" in image_problem(str(bomb))
    with mock.patch.dict(os.environ, {"BYOLCTL_MAX_PIXELS": "400_000_000"}):
        assert image_problem(str(bomb)) is None  # its headers are sound
    result = runner.invoke(app, ["data", "check", "--quick", str(root)],
                           env={"BYOLCTL_MAX_PIXELS": "400000000"})
    assert result.exit_code == 0, result.output
    _fails_cleanly(["data", "check", str(root)], "BYOLCTL_MAX_PIXELS=lots: expected a "
                   "number of pixels", env={"BYOLCTL_MAX_PIXELS": "lots"})


def test_the_pixel_limit_is_raised_by_a_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("BYOLCTL_MAX_PIXELS", raising=False)
    root = _tree(tmp_path / "images")
    (root / "a" / "bomb.png").write_bytes(_bomb_png())
    result = runner.invoke(app, ["--max-pixels", "400000000", "data", "check", "--quick",
                                 str(root)])
    assert result.exit_code == 0, result.output
    monkeypatch.delenv("BYOLCTL_MAX_PIXELS", raising=False)  # the flag set it for the command
    result = runner.invoke(app, ["--max-pixels", "0", "data", "check", str(root)])
    assert result.exit_code == 2
    assert _output(result).splitlines() == ["error: --max-pixels must be at least 1; got 0."]


# --------------------------------------------------------------------------- non-UTF-8 names

def test_data_check_names_a_file_whose_name_is_not_utf8(tmp_path):
    root = _tree(tmp_path / "images")
    _write_not_utf8(root / "a")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1, result.output
    assert "file name is not UTF-8" in _row(result, "a/caf\\xe9.jpg")
    assert "9 images in 2 classes; 1 problem." in _output(result)


def test_pretraining_skips_a_name_that_is_not_utf8_and_lists_it(tmp_path):
    root = _tree(tmp_path / "images")
    bad = _write_not_utf8(root / "a")
    loader = folder_loader(root, image_size=16, batch_size=4, seed=0, workers=1,
                           device=torch.device("cpu"), in_memory=False)
    assert loader.skipped == [(str(bad), "file name is not UTF-8 (DALI cannot open it; "
                                         "rename the file)")]
    assert next(iter(loader)).view1.shape == (4, 3, 16, 16)  # DALI reads the other files
    before = _fingerprint(root)
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--data", str(root), "--out", "run"])
    assert result.exit_code == 0, result.output
    assert "Skipping 1 file that cannot be trained on" in _output(result)
    assert "/a/caf\\xe9.jpg\tfile name is not UTF-8" in Path("run/skipped_files.txt").read_text()
    assert _fingerprint(root) == before


def test_evaluation_skips_a_name_that_is_not_utf8_and_counts_it(run, tmp_path):
    data = tmp_path / "eval"
    _tree(data / "train")
    _tree(data / "val", per_class=2)
    _write_not_utf8(data / "val" / "b")
    result = runner.invoke(app, ["eval", "knn", "--k", "3", "--checkpoint", str(run),
                                 "--data", str(data), *EVAL_FLAGS])
    assert result.exit_code == 0, result.output
    assert "8 train, 4 val" in _output(result) and "1 unreadable image" in _output(result)


# --------------------------------------------------------------------------- folder links

def test_a_link_to_a_parent_folder_is_read_once_and_listed(tmp_path):
    root = _tree(tmp_path / "images")
    os.symlink("..", root / "a" / "up")
    before = _fingerprint(root)
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1, result.output
    assert "8 images in 2 classes; 1 problem." in _output(result)
    assert "link to a folder read already (skipped: each folder is read once)" \
        in _row(result, "a/up")
    loader = folder_loader(root, image_size=16, batch_size=4, seed=0, workers=1,
                           device=torch.device("cpu"), in_memory=False)
    assert loader.num_images == 8
    assert [Path(path).name for path, _ in loader.skipped] == ["up"]
    assert _fingerprint(root) == before


def test_a_folder_reached_by_a_link_and_by_its_own_name_keeps_its_own_class(tmp_path):
    root = _tree(tmp_path / "images", classes=("a", "b", "c"), per_class=2)
    os.symlink(root / "c", root / "a" / "also-c")  # sorted before c, read after it
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(GOOD / "pattern-7.jpg", tmp_path / "elsewhere" / "x.jpg")
    os.symlink(tmp_path / "elsewhere", root / "b" / "more")  # read only through its link
    folder = scan_image_folder(root)
    by_name = {Path(path).relative_to(root).as_posix(): folder.classes[label]
               for path, label in zip(folder.files, folder.labels)}
    assert by_name == {"a/a0.jpg": "a", "a/a1.jpg": "a", "b/b0.jpg": "b", "b/b1.jpg": "b",
                       "b/more/x.jpg": "b", "c/c0.jpg": "c", "c/c1.jpg": "c"}
    assert folder.folders_read_already == [str(root / "a" / "also-c")]


# --------------------------------------------------------------------------- damaged images

@pytest.mark.parametrize("command", [["eval", "knn", "--k", "3"],
                                     ["eval", "linear", "--epochs", "1"]])
def test_an_image_the_checks_miss_stops_evaluation_with_how_to_find_it(run, tmp_path,
                                                                       command):
    data = tmp_path / "eval"
    _tree(data / "train")
    _tree(data / "val", per_class=2)
    shutil.copy(BROKEN / "corrupt-header.jpg", data / "val" / "a")
    before = _fingerprint(run)
    # As if the checks before reading had passed it: DALI's decoder then stops the pipeline.
    with mock.patch.object(byol.data.labeled, "find_problems", return_value=[]):
        output = _fails_cleanly([*command, "--checkpoint", str(run), "--data", str(data),
                                 *EVAL_FLAGS],
                                f"An image of {data / 'val'} could not be decoded")
    assert f"Find it with: byolctl data check {data / 'val'}" in output
    assert "Critical error" not in output
    assert before.items() <= _fingerprint(run).items()  # linear's --resume state may be added
