"""Image folders (`root/<class>/<image>`): listing their images, and finding the files a
loader would choke on. As in torchvision's ImageFolder, a class's images may sit in subfolders
of its folder.

Two depths of checking: the quick one reads each file's format signature, the end marker a
truncated JPEG or PNG lacks, and its headers - fast enough to run before every pretraining; the
full one decodes every image, as `byolctl data check` does.
"""

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from byol.errors import UserError

# The check below names an image of too many pixels and skips it, where Pillow's own check (a
# warning or an error naming no file) would stop the whole command; so Pillow's is off.
Image.MAX_IMAGE_PIXELS = None

# Folder names of a dataset's splits, which a folder of classes does not hold.
SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")
# Formats DALI's image decoder reads.
DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"})
# Images of more pixels than this (10,000 x 10,000; 300 MB decoded) are skipped: a small file
# can announce a huge image (a decompression bomb) that would exhaust the memory of every
# decoder thread. The environment variable raises or lowers it for every command.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_VARIABLE = "BYOLCTL_MAX_PIXELS"
# Why a folder is passed over: it was read already, through a link or under its own name.
FOLDER_READ_ALREADY = "link to a folder read already (skipped: each folder is read once)"


# Leading bytes of each decodable format, and the bytes a complete file of it ends with.
_SIGNATURES = (
    (b"\xff\xd8\xff", b"\xff\xd9"),              # JPEG: end-of-image marker
    (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),    # PNG: IEND chunk
    (b"BM", b""), (b"II*\x00", b""), (b"MM\x00*", b""), (b"RIFF", b""),  # BMP, TIFF, WebP
)
# Generous: some writers pad after the end marker, which is unambiguous in a JPEG (entropy-coded
# data escapes 0xFF) and in a PNG.
_TAIL_BYTES = 1024


def max_pixels() -> int:
    """The most pixels an image may have: BYOLCTL_MAX_PIXELS, or DEFAULT_MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise UserError(f"{MAX_PIXELS_VARIABLE}={value}: expected a number of pixels, such as "
                        f"{MAX_PIXELS_VARIABLE}={4 * DEFAULT_MAX_PIXELS}.")
    return limit


def printable(path: str, root: Path | None = None) -> str:
    """`path` (relative to `root`, if given and below it) as it can be printed and pasted:
    bytes of a file name that are not UTF-8 shown as \\xNN escapes."""
    if root is not None and Path(path).is_relative_to(root):
        path = str(Path(path).relative_to(root))
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_problem(path: str, full: bool = False, pixel_limit: int | None = None) -> str | None:
    """Why `path` cannot be used as a training image, or None when it can.

    The quick check reads a file's format signature, for JPEG and PNG the marker a complete
    file ends with, and its headers (with Pillow): the size they give must be at most
    `pixel_limit` pixels (default `max_pixels()`). `full` decodes the image too.
    """
    if not _is_utf8(path):
        return "file name is not UTF-8 (DALI cannot open it; rename the file)"
    pixel_limit = pixel_limit or max_pixels()
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        if full:
            return _decode_problem(path, pixel_limit)
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
            return _decode_problem(path, pixel_limit, pixels=False)
    return "not an image"


def _is_utf8(path: str) -> bool:
    """Whether `path` is valid UTF-8: Python keeps other bytes of a name as lone surrogates,
    which DALI's readers cannot take."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_problem(path: str, pixel_limit: int, pixels: bool = True) -> str | None:
    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported format {image.format}"
            width, height = image.size
            if width * height > pixel_limit:
                return (f"too many pixels ({width}x{height}, more than {pixel_limit:,}; a "
                        "larger byolctl --max-pixels allows it)")
            if pixels:
                image.load()
    except UnidentifiedImageError:
        return "not an image"
    # Pillow's plugins raise many kinds of error on a damaged file (struct.error, EOFError,
    # IndexError ...): each means the same here, an image that cannot be used.
    except Exception as error:  # noqa: BLE001
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
        limit = max_pixels()
        reasons = pool.map(lambda f: image_problem(f, full, limit), files, chunksize=64)
        for checked, (file, reason) in enumerate(zip(files, reasons), start=1):
            if reason is not None:
                problems.append((file, reason))
            if on_progress is not None:
                on_progress("images checked", checked, len(files))
    return problems


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def files_below(folder: Path, seen: set[tuple[int, int]]
                ) -> tuple[list[Path], list[Path]] | None:
    """(files, links to folders) in `folder` and its subfolders, links not followed; None when
    `folder` was read already. `seen` holds the (device, inode) of every folder read so far
    and gains those read here."""
    if _identity(folder) in seen:
        return None
    files: list[Path] = []
    links: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        identity = _identity(current)
        if identity is None or identity in seen:
            continue
        seen.add(identity)
        try:
            entries = list(os.scandir(current))
        except OSError:  # an unreadable folder holds no image we could read
            continue
        for entry in entries:
            if not _is_folder(entry):
                files.append(Path(entry.path))
            else:
                (links if entry.is_symlink() else pending).append(Path(entry.path))
    return files, links


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of `folder`, links followed; None when it cannot be read."""
    try:
        status = folder.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


@dataclass
class ImageFolder:
    """A `root/<class>/<image>` folder: its images and labels, and what listing them passed
    over."""

    files: list[str]
    labels: list[int]  # index into classes
    classes: list[str]
    other_files: list[str]  # files without an image extension, in class folders
    folders_read_already: list[str]  # reached again through a link, and not read twice

    def passed_over(self) -> list[tuple[str, str]]:
        """(path, reason) for each folder passed over, as listed with unreadable images."""
        return [(path, FOLDER_READ_ALREADY) for path in self.folders_read_already]


def scan_image_folder(root: Path) -> ImageFolder:
    """The images of a `root/<class>/<image>` folder, in sorted order.

    Only files with an image extension count, in subfolders of a class folder too; labels
    index the sorted class-folder names. Each real folder is read once (see `files_below`).
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
    folder = ImageFolder([], [], classes, [], [])
    seen = {_identity(root)}
    # Real folders first, then links to folders not read by then: a link to a parent would
    # repeat its images without end, one to a sibling would count them twice, or in the
    # wrong class.
    queue = deque((root / name, label) for label, name in enumerate(classes))
    while queue:
        path, label = queue.popleft()
        found = files_below(path, seen)
        if found is None:
            folder.folders_read_already.append(str(path))
            continue
        files, links = found
        for file in sorted(files):
            if _is_image_file(file):
                folder.files.append(str(file))
                folder.labels.append(label)
            else:
                folder.other_files.append(str(file))
        queue.extend((link, label) for link in sorted(links))
    # By class, then by path, as a listing without links gives them.
    order = sorted(range(len(folder.files)),
                   key=lambda i: (folder.labels[i], Path(folder.files[i])))
    folder.files = [folder.files[i] for i in order]
    folder.labels = [folder.labels[i] for i in order]
    if not folder.files:
        raise UserError(f"{root}: no images found; expected {root}/<class>/<image>.jpg.")
    return folder


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
    folder = scan_image_folder(root)
    problems = [(str(entry), "outside any class folder (ignored)")
                for entry in sorted(root.iterdir()) if not entry.is_dir()]
    with_images = set(folder.labels)
    problems.extend((str(root / name), "empty class folder (no images in it)")
                    for label, name in enumerate(folder.classes) if label not in with_images)
    problems.extend((path, f"not an image file (extension {Path(path).suffix or 'none'}; "
                           "ignored)") for path in folder.other_files)
    problems.extend(folder.passed_over())
    problems.extend(find_problems(folder.files, full=full, on_progress=on_progress))
    return FolderReport(images=len(folder.files), classes=folder.classes, problems=problems)
