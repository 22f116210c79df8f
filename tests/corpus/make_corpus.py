"""Writes the bad-input corpus beside this file (run it again to recreate it; the files are
committed, so that a reader can open them and `byolctl data check` can be tried on them).

    python tests/corpus/make_corpus.py

images/ is a `<class>/<image>` folder: `good` holds plain JPEGs, `odd` files that are unusual
but valid, `broken` files no decoder can use. docs/runs.md#bad-input says what byolctl does
with each.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent


def _pattern(seed: int, size=(32, 32)) -> Image.Image:
    """A smooth random color pattern, so that crops and color jitter have something to see."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 1, size[1])[:, None, None], np.linspace(0, 1, size[0])[None, :, None]
    image = (corners[0, 0] * (1 - ys) * (1 - xs) + corners[0, 1] * (1 - ys) * xs
             + corners[1, 0] * ys * (1 - xs) + corners[1, 1] * ys * xs)
    noise = rng.normal(0, 12, image.shape)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


def _jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    _pattern(seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    images = HERE / "images"
    for name in ("good", "odd", "broken"):
        (images / name).mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (images / "good" / f"pattern-{i}.jpg").write_bytes(_jpeg_bytes(i))
    (images / "good" / "notes.txt").write_text("not an image: ignored, and listed by data check\n")

    odd = images / "odd"
    _pattern(10).convert("RGBA").save(odd / "alpha.png")
    _pattern(11).convert("CMYK").save(odd / "cmyk.jpg")
    _pattern(12).convert("L").save(odd / "gray.jpg")
    gray16 = (np.asarray(_pattern(13).convert("L"), np.uint16) * 257)
    Image.fromarray(gray16).save(odd / "gray16.png")
    Image.new("RGB", (1, 1), (0, 200, 0)).save(odd / "one-pixel.png")
    _pattern(14, size=(600, 4)).save(odd / "wide-600x4.jpg")
    _pattern(15, size=(4, 600)).save(odd / "tall-4x600.jpg")

    broken = images / "broken"
    for i in range(2):
        (broken / f"fine-{i}.jpg").write_bytes(_jpeg_bytes(20 + i))
    (broken / "zero-bytes.jpg").write_bytes(b"")
    (broken / "text.jpg").write_text("this is a text file with an image's name\n")
    whole = _jpeg_bytes(30)
    (broken / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    damaged = bytearray(whole)
    rng = np.random.default_rng(31)
    damaged[20:200] = rng.integers(0, 256, 180, dtype=np.uint8).tobytes()  # headers garbled
    (broken / "corrupt-header.jpg").write_bytes(bytes(damaged))
    (broken / "garbage-inside.jpg").write_bytes(
        b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes() + b"\xff\xd9")

    (HERE / "not-a-checkpoint.pt").write_text("these are notes, not a checkpoint\n")


if __name__ == "__main__":
    main()
