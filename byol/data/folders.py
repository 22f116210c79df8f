"""Image folders (`root/<class>/<image>`): listing their images, and finding the files a
loader would choke on.

Two depths of checking: `quick` reads each file's header (and a JPEG's last bytes, where a
truncated file lacks its end-of-image marker) - fast enough to run before every pretraining;
`full` decodes every image, as `byolctl data check` does.
"""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from byol.errors import UserError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")
# Formats DALI's image decoder reads.
DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"})
_JPEG_END = b"\xff\xd9"


def image_problem(path: str, full: bool = False) -> str | None:
    """Why `path` cannot be used as a training image, or None when it can."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported format {image.format}"
            if full:
                image.load()
            elif image.format in ("JPEG", "MPO") and not _ends_like_jpeg(path):
                return "truncated JPEG (no end-of-image marker)"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return f"corrupt image ({error})"
    return None


def _ends_like_jpeg(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        return _JPEG_END in f.read()


def find_problems(files: Sequence[str], full: bool = False,
                  threads: int = 16) -> list[tuple[str, str]]:
    """(path, reason) for every unusable file, in the order of `files`. Reading is I/O bound,
    so threads help even on few cores."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = pool.map(lambda f: image_problem(f, full), files, chunksize=64)
        return [(f, reason) for f, reason in zip(files, reasons) if reason is not None]


def scan_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, classes) of a `root/<class>/<image>` folder, in sorted order.

    Only files with an image extension count; labels index the sorted class-folder names.
    """
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; pass a folder of <class>/<image> files.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and path.is_file():
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


def check_folder(root: Path, full: bool = True) -> FolderReport:
    """Every problem of an image folder: unreadable images (decoded in full unless `full` is
    False), files that are not images, files outside class folders, empty class folders."""
    files, _, classes = scan_image_folder(root)
    problems = []
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            problems.append((str(entry), "outside any class folder (ignored)"))
        elif not any(entry.iterdir()):
            problems.append((str(entry), "empty class folder"))
        else:
            problems.extend(
                (str(p), f"not an image file (extension {p.suffix or 'none'}; ignored)")
                for p in sorted(entry.iterdir())
                if p.is_file() and p.suffix.lower().lstrip(".") not in IMAGE_EXTENSIONS)
    problems.extend(find_problems(files, full=full))
    return FolderReport(images=len(files), classes=classes, problems=problems)
