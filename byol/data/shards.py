"""WebDataset tar shards: writing them from an image folder, and finding them for reading.

    byolctl data prepare /datasets/imagenet/train /fast/imagenet-shards --shard-size 10000

For each image a shard holds `<key>.<ext>` (the original file's bytes), `<key>.cls` (its class
index as text, the WebDataset convention) and `<key>.i32` (the same index as a little-endian
int32, which DALI reads directly). Beside each shard `shard-NNNNNN.tar`, `shard-NNNNNN.idx`
is its index in DALI's format (see `write_index`), so that DALI need not scan the archives
before it starts. `manifest.json` lists the shards with their image counts and indexes, and
the class names.
"""

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from byol.config import AT_LEAST_1, check_value
from byol.data.folders import Progress, find_problems, scan_image_folder
from byol.errors import UserError, plural

MANIFEST = "manifest.json"
FORMAT = "byolctl-shards"
LABEL_EXTENSION = "i32"
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass
class ShardSet:
    """Shards to read: their paths, how many images they hold, and the class names."""

    paths: list[str]
    images: int
    classes: list[str]
    skipped: list[tuple[str, str]]  # unreadable files left out when the shards were written
    # One index per shard, or None where a shard has none (DALI then scans the archives).
    index_paths: list[str] | None = None


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_index(shard: Path, index: Path) -> None:
    """Write the DALI index of `shard` (as DALI's wds2idx does): a line `v1.2 <samples>`, then
    one line per sample, `<ext> <offset> <size> <member name>` for each of its members, where
    a sample is a run of members sharing the name before the first dot."""
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(shard) as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            if key != last_key:
                samples.append([])
                last_key = key
            samples[-1].append(f"{extension} {member.offset_data} {member.size} {member.name}")
    lines = [f"v1.2 {len(samples)}", *(" ".join(sample) for sample in samples)]
    index.write_text("\n".join(lines) + "\n")


def prepare_shards(source: Path, destination: Path, shard_size: int, seed: int = 0,
                   on_progress: Progress | None = None) -> ShardSet:
    """Write the usable images of `source` (`<class>/<image>`) as shards in `destination`;
    `on_progress` hears of each image checked, then of each image written.

    The images are shuffled once (seeded) so that every shard mixes the classes: DALI reads a
    shard front to back. Unreadable images are left out and listed in the manifest.
    """
    check_value(shard_size, AT_LEAST_1, "--shard-size")
    if destination.resolve().is_relative_to(source.resolve()):
        raise UserError(f"{destination} is inside {source}, where the shards would become part "
                        "of the image folder; choose a folder outside it.")
    if destination.exists() and not destination.is_dir():
        raise UserError(f"{destination} is a file; choose a new folder for the shards.")
    if destination.exists() and any(destination.iterdir()):
        raise UserError(f"{destination} is not empty; choose a new folder for the shards.")
    folder = scan_image_folder(source)
    classes = folder.classes
    unreadable = find_problems(folder.files, on_progress=on_progress)
    bad = {path for path, _ in unreadable}
    usable = [(f, label) for f, label in zip(folder.files, folder.labels) if f not in bad]
    skipped = sorted(folder.passed_over() + unreadable)
    if not usable:
        raise UserError(f"{source}: none of its {plural(len(folder.files), 'image')} can be "
                        "read; run byolctl data check on it.")
    order = torch.randperm(len(usable), generator=torch.Generator().manual_seed(seed)).tolist()
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot create {destination} ({error.strerror or error}); choose a "
                        "folder you can write to.") from error
    shards, written = [], 0
    for start in range(0, len(order), shard_size):
        name = f"shard-{start // shard_size:06d}.tar"
        index = f"{Path(name).stem}.idx"
        tmp, tmp_index = destination / f".{name}.tmp", destination / f".{index}.tmp"
        try:  # a failed write (a full disk, a Ctrl-C) leaves no partial shard behind
            with tarfile.open(tmp, "w") as archive:
                for key in order[start:start + shard_size]:
                    path, label = usable[key]
                    stem = f"{key:09d}"
                    _add_member(archive, f"{stem}{Path(path).suffix.lower()}",
                                Path(path).read_bytes())
                    _add_member(archive, f"{stem}.cls", str(label).encode())
                    _add_member(archive, f"{stem}.{LABEL_EXTENSION}",
                                label.to_bytes(4, "little"))
                    written += 1
                    if on_progress is not None:
                        on_progress("images written", written, len(order))
            write_index(tmp, tmp_index)
            tmp_index.rename(destination / index)
            tmp.rename(destination / name)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_index.unlink(missing_ok=True)
        shards.append({"name": name, "images": len(order[start:start + shard_size]),
                       "index": index})
    manifest = {"format": FORMAT, "version": 1, "classes": classes, "shards": shards,
                "skipped": [{"path": p, "reason": r} for p, r in skipped]}
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return ShardSet([str(destination / s["name"]) for s in shards], len(order), classes, skipped,
                    [str(destination / s["index"]) for s in shards])


def expand_braces(pattern: str) -> list[str]:
    """`shards/{0000..0099}.tar` -> the 100 paths, zero-padded as written."""
    match = _BRACES.search(pattern)
    if not match:
        return [pattern]
    low, high = match.groups()
    width = len(low)
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [p for i in range(int(low), int(high) + 1)
            for p in expand_braces(f"{head}{i:0{width}d}{tail}")]


def is_shard_source(data: str) -> bool:
    """Whether `--data` names shards: a `.tar` path or pattern, or a folder with a manifest."""
    return data.endswith(".tar") or (Path(data) / MANIFEST).is_file()


def find_shards(data: str) -> ShardSet:
    """The shards `--data` names: a folder written by `prepare_shards`, or a path pattern.

    Image counts, class names and indexes come from the manifest beside the shards; shards
    without a readable index each (written before indexes were, or copied without them) are
    read without any.
    """
    folder = Path(data) if (Path(data) / MANIFEST).is_file() else Path(data).parent
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"--data {data}: no {MANIFEST} beside the shards; write them with "
                        "byolctl data prepare.")
    manifest = json.loads(manifest_path.read_text())
    counts = {s["name"]: s["images"] for s in manifest["shards"]}
    # Shards written before indexes were may have had them added with DALI's wds2idx.
    indexes = {s["name"]: folder / s.get("index", Path(s["name"]).with_suffix(".idx"))
               for s in manifest["shards"]}
    paths = ([str(folder / name) for name in counts] if Path(data).is_dir()
             else expand_braces(data))
    missing = [p for p in paths if not Path(p).is_file() or Path(p).name not in counts]
    if missing:
        raise UserError(f"--data {data}: {missing[0]} is missing or not in {manifest_path}.")
    skipped = [(s["path"], s["reason"]) for s in manifest.get("skipped", [])]
    index_paths = [indexes[Path(p).name] for p in paths]
    if not all(_is_index(index) for index in index_paths):
        index_paths = None  # DALI takes an index for every shard or for none
    return ShardSet(paths, sum(counts[Path(p).name] for p in paths), manifest["classes"],
                    skipped, index_paths and [str(index) for index in index_paths])


def _is_index(path: Path) -> bool:
    """Whether `path` starts like a DALI index: one cut short in copying, or empty, would stop
    DALI's reader, where no index only makes it scan the archive."""
    try:
        with path.open("rb") as f:
            return f.read(5) == b"v1.2 "
    except OSError:
        return False
