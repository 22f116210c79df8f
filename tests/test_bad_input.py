"""The bad-input corpus (tests/corpus, described in docs/runs.md#bad-input): each file gets its
documented behaviour - it trains, it is skipped and counted, or the command says in one line
what to do and exits with status 2. Never a traceback, and nothing already written is
changed."""

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from typer.testing import CliRunner

import byol.data.dali
from byol.data.dali import folder_loader
from byol.errors import UserError
from byol.pretrain import prepare_run
from byolctl.cli import app
from tests.conftest import REPO

CORPUS = REPO / "tests" / "corpus"
runner = CliRunner()

# Unusual but valid: each becomes a 3-channel view.
ODD = {"alpha.png", "cmyk.jpg", "gray.jpg", "gray16.png", "one-pixel.png", "wide-600x4.jpg",
       "tall-4x600.jpg"}
# Unusable: name -> the reason given when it is skipped.
BROKEN = {
    "zero-bytes.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated",
    "corrupt-header.jpg": "not an image",
    "garbage-inside.jpg": "corrupt image",
}
TINY_FLAGS = ["--arch", "resnet18", "--image-size", "16", "--batch-size", "4", "--steps", "2",
              "--workers", "1", "--device", "cpu", "--knn-every", "0", "--no-probe"]


def _fails_cleanly(args: list[str], message: str) -> str:
    """Run the command line; it must exit 2 with `message` and no traceback."""
    result = runner.invoke(app, args)
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert message in output, output
    assert "Traceback" not in result.output
    return output


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def images(tmp_path) -> Path:
    """The corpus image folder, plus an empty class folder (git keeps no empty folders)."""
    root = tmp_path / "images"
    shutil.copytree(CORPUS / "images", root)
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-step run folder; tests copy it before they touch it."""
    out = tmp_path_factory.mktemp("checkpoints") / "run"
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------- images

def test_broken_files_are_skipped_and_odd_ones_become_rgb_views(images):
    loader = folder_loader(images, image_size=16, batch_size=4, seed=0, workers=1,
                           device=torch.device("cpu"))
    skipped = {Path(path).name: reason for path, reason in loader.skipped}
    assert set(skipped) == set(BROKEN)
    assert all(BROKEN[name] in reason for name, reason in skipped.items())
    assert loader.num_images == 8 + len(ODD) + 2
    batches = iter(loader)
    for _ in range(2 * loader.steps_per_epoch):  # two epochs: every usable file, twice
        batch = next(batches)
        assert batch.view1.shape == (4, 3, 16, 16) and torch.isfinite(batch.view1).all()


def test_pretraining_skips_counts_and_lists_the_broken_files(images):
    before = _fingerprint(images)
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--data", str(images), "--out", "run"])
    assert result.exit_code == 0, result.output
    assert f"Skipping {len(BROKEN)} files that cannot be trained on" in result.output
    listed = [Path(line.split("\t")[0]).name
              for line in Path("run/skipped_files.txt").read_text().splitlines()]
    assert sorted(listed) == sorted(BROKEN)
    assert _fingerprint(images) == before  # the data is only read


def test_strict_stops_at_the_first_broken_file_with_its_name(images):
    output = _fails_cleanly(["pretrain", *TINY_FLAGS, "--data", str(images), "--strict",
                             "--out", "run"], "broken/")
    assert "--strict" in output and not Path("run").exists()


def test_a_folder_with_no_readable_image_is_a_clean_error(tmp_path):
    root = tmp_path / "all-broken"
    (root / "broken").mkdir(parents=True)
    for name in BROKEN:
        shutil.copy(CORPUS / "images" / "broken" / name, root / "broken")
    _fails_cleanly(["pretrain", *TINY_FLAGS, "--data", str(root)],
                   f"none of its {len(BROKEN)} images can be read")


def test_a_missing_data_path_is_a_clean_error():
    _fails_cleanly(["pretrain", *TINY_FLAGS, "--data", "no/such/folder"], "no such folder")
    _fails_cleanly(["eval", "knn", "--checkpoint", "no/such/run"], "No checkpoint")


def test_an_image_the_checks_miss_stops_the_run_with_how_to_find_it(images, tmp_path):
    root = tmp_path / "one-bad"
    (root / "a").mkdir(parents=True)
    for name in ("pattern-0.jpg", "pattern-1.jpg", "pattern-2.jpg"):
        shutil.copy(images / "good" / name, root / "a")
    shutil.copy(images / "broken" / "corrupt-header.jpg", root / "a")
    # As if the checks before the run had passed it: DALI's decoder then stops the pipeline.
    with mock.patch.object(byol.data.dali, "find_problems", return_value=[]):
        _fails_cleanly(["pretrain", *TINY_FLAGS, "--data", str(root), "--out", "run"],
                       f"An image of --data {root} could not be decoded")
    output = " ".join(runner.invoke(app, ["data", "check", str(root)]).output.split())
    assert "corrupt-header.jpg" in output


def test_data_check_lists_every_problem_and_exits_1(images, tmp_path):
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["data", "check", str(images), "--json", str(report)])
    assert result.exit_code == 1, result.output
    problems = {Path(p["path"]).name: p["reason"]
                for p in json.loads(report.read_text())["problems"]}
    assert set(problems) == set(BROKEN) | {"notes.txt", "empty"}
    assert "empty class folder" in problems["empty"]
    assert "not an image file" in problems["notes.txt"]


def test_data_check_of_a_clean_folder_exits_0(tmp_path):
    root = tmp_path / "clean"
    shutil.copytree(CORPUS / "images" / "odd", root / "odd")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0 and f"{len(ODD)} images in 1 class; 0 problems" \
        in " ".join(result.output.split())


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_COMMANDS = {
    "resume": lambda path: ["pretrain", *TINY_FLAGS, "--resume", str(path)],
    "eval": lambda path: ["eval", "knn", "--checkpoint", str(path), "--k", "5"],
    "export": lambda path: ["export", "--checkpoint", str(path), "--out", "encoder.pt"],
}


@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_a_file_that_is_not_a_checkpoint_is_refused_by_every_command(command):
    _fails_cleanly(CHECKPOINT_COMMANDS[command](CORPUS / "not-a-checkpoint.pt"),
                   "is not a loadable checkpoint")
    assert not Path("encoder.pt").exists()


@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_a_pickle_carrying_code_is_refused_and_its_code_never_runs(command, tmp_path):
    marker = tmp_path / "the-code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"format": "byolctl-pretrain", "payload": Payload()}))
    _fails_cleanly(CHECKPOINT_COMMANDS[command](hostile), "is not a loadable checkpoint")
    assert not marker.exists()


def test_a_truncated_checkpoint_is_refused_and_the_run_is_untouched(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "last.pt"
    data = last.read_bytes()
    last.unlink()  # last.pt is a second name of the step file: cut this name only
    last.write_bytes(data[: len(data) // 2])
    before = _fingerprint(copy)
    for command in CHECKPOINT_COMMANDS.values():
        _fails_cleanly(command(last), "is not a loadable checkpoint")
    assert _fingerprint(copy) == before


def test_resuming_with_another_architecture_is_refused(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = _fingerprint(copy)
    flags = [flag if flag != "resnet18" else "resnet34" for flag in TINY_FLAGS]
    _fails_cleanly(["pretrain", *flags, "--resume", str(copy / "last.pt")],
                   "Cannot resume with changed settings: arch='resnet34' (run has 'resnet18')")
    assert _fingerprint(copy) == before


def test_a_checkpoint_whose_weights_are_of_another_architecture_is_refused(run, tmp_path):
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["model"]["arch"] = "resnet34"  # resnet18 weights under a resnet34 config
    mismatched = tmp_path / "mismatched.pt"
    torch.save(state, mismatched)
    _fails_cleanly(CHECKPOINT_COMMANDS["eval"](mismatched), "does not hold a usable online encoder")
    _fails_cleanly(CHECKPOINT_COMMANDS["export"](mismatched),
                   "does not hold a usable online encoder")
    with pytest.raises(UserError, match="does not match the run its settings describe"):
        prepare_run(None, {}, tmp_path / "continued", str(mismatched))

