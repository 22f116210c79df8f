"""Odd and broken image files: odd ones train, broken ones are skipped, listed, or (--strict)
stop the run with their name; `byolctl data check` lists every problem."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from byol.data.dali import folder_loader
from byol.errors import UserError
from byolctl.cli import app
from tests.conftest import run_pretraining

# name -> how to write it; every one of these must come out as a 3-channel view.
ODD_BUT_VALID = {
    "alpha.png": lambda p: Image.new("RGBA", (24, 20), (200, 10, 10, 90)).save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (24, 20), (0, 200, 200, 10)).save(p),
    "gray.jpg": lambda p: Image.new("L", (24, 20), 90).save(p),
    "gray16.png": lambda p: Image.fromarray(np.full((20, 24), 40000, np.uint16)).save(p),
    "tiny.png": lambda p: Image.new("RGB", (1, 1), (0, 255, 0)).save(p),
    "wide.jpg": lambda p: Image.new("RGB", (400, 3), (0, 0, 255)).save(p),
}
BROKEN = {
    "zero.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated",
}


@pytest.fixture
def messy_folder(tmp_path, cifar_folder):
    """Class `real` holds 8 CIFAR JPEGs; class `odd` the odd files; class `broken` the broken
    ones plus 2 good JPEGs; also a stray text file and an empty class folder."""
    root = tmp_path / "messy"
    for name in ("real", "odd", "broken", "empty"):
        (root / name).mkdir(parents=True)
    cat_jpegs = sorted((cifar_folder / "cat").glob("*.jpg"))
    for jpeg in cat_jpegs[:8]:
        shutil.copy(jpeg, root / "real")
    for name, write in ODD_BUT_VALID.items():
        write(root / "odd" / name)
    for jpeg in cat_jpegs[8:]:
        shutil.copy(jpeg, root / "broken")
    (root / "broken" / "zero.jpg").write_bytes(b"")
    (root / "broken" / "text.jpg").write_text("this is not a picture")
    (root / "broken" / "truncated.jpg").write_bytes(cat_jpegs[0].read_bytes()[:-200])
    (root / "real" / "notes.txt").write_text("labels were checked by hand")
    return root


def test_broken_files_are_skipped_and_odd_ones_become_rgb_views(messy_folder):
    loader = folder_loader(messy_folder, image_size=16, batch_size=4, seed=0, workers=1,
                              device=torch.device("cpu"))
    skipped = {path.split("/")[-1]: reason for path, reason in loader.skipped}
    assert set(skipped) == set(BROKEN)
    assert all(BROKEN[name] in reason for name, reason in skipped.items())
    assert loader.num_images == 8 + len(ODD_BUT_VALID) + 2
    batches = iter(loader)
    for _ in range(2 * loader.steps_per_epoch):  # two epochs: every usable file, twice
        batch = next(batches)
        assert batch.view1.shape == (4, 3, 16, 16) and torch.isfinite(batch.view1).all()


def test_strict_stops_at_the_first_broken_file_with_its_name(messy_folder):
    with pytest.raises(UserError, match=r"broken/(text|truncated|zero)\.jpg: .*--strict"):
        folder_loader(messy_folder, image_size=16, batch_size=4, seed=0, workers=1,
                         device=torch.device("cpu"), strict=True)


def test_pretraining_lists_the_skipped_files_in_the_run(messy_folder, tiny):
    run_pretraining({**tiny, "data": str(messy_folder), "batch_size": 4, "steps": 2})
    listed = [line.split("\t")[0].split("/")[-1]
              for line in open("run/skipped_files.txt").read().splitlines()]
    assert sorted(listed) == sorted(BROKEN)


def test_data_check_lists_every_problem_and_exits_1(messy_folder, tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["data", "check", str(messy_folder), "--json", str(report)])
    assert result.exit_code == 1, result.output
    problems = {p["path"].split("/")[-1]: p["reason"]
                for p in json.loads(report.read_text())["problems"]}
    assert set(problems) == set(BROKEN) | {"notes.txt", "empty"}
    assert "empty class folder" in problems["empty"]
    assert "not an image file" in problems["notes.txt"]


def test_data_check_of_a_clean_folder_exits_0(cifar_folder):
    result = CliRunner().invoke(app, ["data", "check", str(cifar_folder)])
    assert result.exit_code == 0 and "30 images in 3 classes; 0 problems" in result.output
