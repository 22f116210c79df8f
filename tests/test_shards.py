"""WebDataset shards: `byolctl data prepare` writes them, pretraining reads them through DALI."""

import json
import tarfile

import pytest
import torch
from typer.testing import CliRunner

from byol.data.dali import shards_loader
from byol.data.shards import expand_braces, find_shards, prepare_shards
from byol.errors import UserError
from byolctl.cli import app
from tests.conftest import CIFAR_CLASSES, run_pretraining


@pytest.fixture
def shard_dir(cifar_folder, tmp_path):
    destination = tmp_path / "shards"
    prepare_shards(cifar_folder, destination, shard_size=8)
    return destination


def test_prepare_writes_every_image_with_its_label_into_mixed_shards(shard_dir, cifar_folder):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["classes"] == list(CIFAR_CLASSES)
    assert [s["images"] for s in manifest["shards"]] == [8, 8, 8, 6]
    originals = {p.read_bytes(): CIFAR_CLASSES.index(p.parent.name)
                 for p in cifar_folder.glob("*/*.jpg")}
    seen = {}
    for shard in manifest["shards"]:
        with tarfile.open(shard_dir / shard["name"]) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive}
        stems = {name.split(".")[0] for name in members}
        for stem in stems:
            label = int(members[f"{stem}.cls"])
            assert int.from_bytes(members[f"{stem}.i32"], "little") == label
            seen[members[f"{stem}.jpg"]] = label
    assert seen == originals
    with tarfile.open(shard_dir / "shard-000000.tar") as archive:
        first_labels = {int(archive.extractfile(m).read()) for m in archive
                        if m.name.endswith(".cls")}
    assert len(first_labels) > 1  # shuffled before sharding


def test_each_shard_has_an_index_pointing_at_its_members(shard_dir):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    for shard in manifest["shards"]:
        lines = (shard_dir / shard["index"]).read_text().splitlines()
        assert lines[0] == f"v1.2 {shard['images']}" and len(lines) == 1 + shard["images"]
        tar_bytes = (shard_dir / shard["name"]).read_bytes()
        with tarfile.open(shard_dir / shard["name"]) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive}
        indexed = {}
        for line in lines[1:]:
            fields = line.split()
            assert len(fields) == 12  # jpg, cls and i32, 4 fields each
            stems = set()
            for extension, offset, size, name in zip(*[iter(fields)] * 4):
                stem, _, ext = name.partition(".")
                assert ext == extension
                stems.add(stem)
                indexed[name] = tar_bytes[int(offset):int(offset) + int(size)]
            assert len(stems) == 1
        assert indexed == members


def test_shards_without_indexes_are_still_read(shard_dir):
    assert find_shards(str(shard_dir)).index_paths is not None
    (shard_dir / "shard-000002.idx").write_text("")  # cut short in copying
    assert find_shards(str(shard_dir)).index_paths is None
    (shard_dir / "shard-000001.idx").unlink()
    shards = find_shards(str(shard_dir))
    assert shards.index_paths is None
    loader = shards_loader(str(shard_dir), image_size=16, batch_size=5, seed=2, workers=1,
                           device=torch.device("cpu"))
    assert next(iter(loader)).view1.shape == (5, 3, 16, 16)


def test_indexes_added_beside_shards_of_an_older_manifest_are_used(shard_dir):
    manifest_path = shard_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for shard in manifest["shards"]:
        del shard["index"]
    manifest_path.write_text(json.dumps(manifest))
    paths = find_shards(str(shard_dir)).index_paths
    assert paths == [str(shard_dir / f"shard-00000{i}.idx") for i in range(4)]


def test_prepare_refuses_a_folder_that_is_not_empty(shard_dir, cifar_folder):
    with pytest.raises(UserError, match="not empty"):
        prepare_shards(cifar_folder, shard_dir, shard_size=8)


def test_prepare_refuses_destinations_that_would_harm_or_hold_nothing(cifar_folder, tmp_path):
    with pytest.raises(UserError, match="inside"):
        prepare_shards(cifar_folder, cifar_folder / "shards", shard_size=8)
    assert not (cifar_folder / "shards").exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        prepare_shards(cifar_folder, tmp_path / "a-file", shard_size=8)
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "broken.jpg").write_text("not a jpeg")
    with pytest.raises(UserError, match="none of its 1 image can be read"):
        prepare_shards(tmp_path / "bad", tmp_path / "out", shard_size=8)
    assert not (tmp_path / "out").exists()


def test_shards_are_found_by_folder_or_by_pattern(shard_dir):
    assert find_shards(str(shard_dir)).images == 30
    pattern = find_shards(str(shard_dir / "shard-{000001..000002}.tar"))
    assert pattern.images == 16 and len(pattern.paths) == 2
    assert expand_braces("s/{08..10}.tar") == ["s/08.tar", "s/09.tar", "s/10.tar"]
    with pytest.raises(UserError, match="missing"):
        find_shards(str(shard_dir / "shard-{000003..000004}.tar"))


def test_shard_batches_have_the_trainers_shape_and_resume_exactly(shard_dir, capfd):
    def make():
        return shards_loader(str(shard_dir), image_size=16, batch_size=5, seed=2, workers=1,
                             device=torch.device("cpu"))

    loader = make()
    batches = iter(loader)
    labels = []
    for _ in range(loader.steps_per_epoch):
        batch = next(batches)
        labels += batch.labels.tolist()
    assert batch.view1.shape == (5, 3, 16, 16) and sorted(set(labels)) == [0, 1, 2]
    next(batches)
    state = loader.state_dict()
    expected = next(batches)
    restored = make()
    restored.load_state_dict(state)
    assert torch.equal(next(iter(restored)).view1, expected.view1)
    assert "Index file not provided" not in capfd.readouterr().err  # the indexes were used


def test_data_prepare_then_pretrain_on_the_shards(cifar_folder, tmp_path, tiny):
    destination = tmp_path / "cli-shards"
    result = CliRunner().invoke(app, ["data", "prepare", str(cifar_folder), str(destination),
                                      "--shard-size", "10"])
    assert result.exit_code == 0, result.output
    assert "Wrote 30 images of 3 classes in 3 shards" in result.output
    _, summary, _ = run_pretraining({**tiny, "data": str(destination), "workers": 1})
    assert summary.step == 6
