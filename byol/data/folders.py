"""Image folders (`root/<class>/<image>`): listing their images, and finding the files a
loader would choke on. As in torchvision's ImageFolder, a class's images may sit in subfolders
of its folder.

Two depths of checking: the quick one reads each file's format signature, the end marker a
truncated JPEG or PNG lacks, and its headers - fast enough to run before every pretraining; the
full one decodes every image, as `byolctl data check` does.
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from byol.errors import UserError

# Folder names of a dataset's splits, which a folder of classes does not hold.
SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")
# Formats DALI's image decoder reads.
DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"})


# Leading bytes of each decodable format, and the bytes a complete file of it ends with.
_SIGNATURES = (
    (b"\xff\xd8\xff", b"\xff\xd9"),              # JPEG: end-of-image marker
    (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),    # PNG: IEND chunk
    (b"BM", b""), (b"II*\x00", b""), (b"MM\x00*", b""), (b"RIFF", b""),  # BMP, TIFF, WebP
)
# Generous: some writers pad after the end marker, which is unambiguous in a JPEG (entropy-coded
# data escapes 0xFF) and in a PNG.
_TAIL_BYTES = 1024


def image_problem(path: str, full: bool = False) -> str | None:
    """Why `path` cannot be used as a training image, or None when it can.

    The quick check reads a file's format signature, for JPEG and PNG the marker a complete
    file ends with, and its headers (with Pillow). `full` decodes the image too.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        if full:
            return _decode_problem(path)
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except OSError as error:
        return f"cannot read ({error.strerror or error})"
    for magic, ending in _SIGNATURES:
        if head.startswith(magic):
            if magic == b"RIFF" and head[8:12] != b"WEBP":
                break
            if ending not in tail:
                return "truncated (no end marker)"
            # Parsing the headers (not the pixels) finds the damage that would make the
            # decoder stop the whole pipeline; damaged pixel data decodes, with artifacts.
            return _decode_problem(path, pixels=False)
    return "not an image"


def _decode_problem(path: str, pixels: bool = True) -> str | None:
    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported format {image.format}"
            if pixels:
                image.load()
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return f"corrupt image ({error})"
    return None


# on_progress(task, completed, total): e.g. ("images checked", 51200, 1281167).
Progress = Callable[[str, int, int], None]


def find_problems(files: Sequence[str], full: bool = False, threads: int = 16,
                  on_progress: Progress | None = None) -> list[tuple[str, str]]:
    """(path, reason) for every unusable file, in the order of `files`; `on_progress` hears
    of each file checked. Reading is I/O bound, so threads help even on few cores."""
    problems = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = pool.map(lambda f: image_problem(f, full), files, chunksize=64)
        for checked, (file, reason) in enumerate(zip(files, reasons), start=1):
            if reason is not None:
                problems.append((file, reason))
            if on_progress is not None:
                on_progress("images checked", checked, len(files))
    return problems


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def files_below(folder: Path) -> list[Path]:
    """Every file in `folder` and its subfolders (links followed), sorted by path."""
    return sorted(Path(parent) / name
                  for parent, _, names in os.walk(folder, followlinks=True) for name in names)


def scan_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, classes) of a `root/<class>/<image>` folder, in sorted order.

    Only files with an image extension count, in subfolders of a class folder too; labels
    index the sorted class-folder names.
    """
    if root.is_file():
        raise UserError(f"{root}: a file, not a folder; pass a folder of <class>/<image> files.")
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; pass a folder of <class>/<image> files.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if "train" in classes and set(classes) <= set(SPLIT_NAMES):
        # Its images would be found one level down, labelled by split: refuse, not mix them.
        raise UserError(f"{root} holds the splits {', '.join(classes)}, not classes; pass "
                        f"{root / 'train'}.")
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in files_below(root / name):
            if _is_image_file(path):
                files.append(str(path))
                labels.append(label)
    if not files:
        raise UserError(f"{root}: no images found; expected {root}/<class>/<image>.jpg.")
    return files, labels, classes


@dataclass
class FolderReport:
    """What `check_folder` found."""

    images: int
    classes: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def check_folder(root: Path, full: bool = True,
                 on_progress: Progress | None = None) -> FolderReport:
    """Every problem of an image folder: unreadable images (decoded in full unless `full` is
    False), files that are not images, files outside class folders, empty class folders.
    `on_progress` hears of each image checked."""
    files, _, classes = scan_image_folder(root)
    problems = []
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            problems.append((str(entry), "outside any class folder (ignored)"))
            continue
        below = files_below(entry)
        if not any(_is_image_file(path) for path in below):
            problems.append((str(entry), "empty class folder (no images in it)"))
        problems.extend((str(path), f"not an image file (extension {path.suffix or 'none'}; "
                                    "ignored)")
                        for path in below if not _is_image_file(path))
    problems.extend(find_problems(files, full=full, on_progress=on_progress))
    return FolderReport(images=len(files), classes=classes, problems=problems)
