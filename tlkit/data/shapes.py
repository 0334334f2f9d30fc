"""Built-in dataset ``tlkit_shapes``: procedurally drawn shapes with per-pixel masks.

It exists so that tlkit runs end to end offline (quickstart, tests) with no download:
the images are rendered with numpy on first use and written into the TFDS data dir
like any TFDS dataset, so ``tfds.load("tlkit_shapes", data_dir=...)`` works once this
module is imported. Every example is drawn from a generator seeded by
``(config seed, split index, example index)``, so a given version + config always
produces identical bytes.

Configs `default` and `tiny` hold one shape per image, with its mask (`label`, `mask`).
Config `multi` is multi-label: a 2x2 grid of cells, each holding a random shape or
nothing, and `labels`, the sorted distinct shapes present (empty for ~8% of images).
Adding it needed no version bump: each config has its own data dir, and the
single-label configs' code path and random streams are untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds

NAME = "tlkit_shapes"
# Sorted, because ClassLabel ids must match the alphabetical order folder datasets use.
CLASS_NAMES: list[str] = ["circle", "square", "star", "triangle"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")

_STAR_INNER_RATIO = 0.42  # inner/outer radius; a regular pentagram is 0.382
_MIN_FG_DISTANCE = 150.0  # min RGB distance between shape colour and mean background


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Size of the images and of each split, plus the seed all examples derive from."""

    image_size: int = 64
    num_train: int = 3000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0
    # 0: one shape per image, with its mask (single-label). N > 0: multi-label, an N x N
    # grid of cells, each empty with `empty_cell_probability` or else holding one shape.
    grid: int = 0
    empty_cell_probability: float = 0.0

    def split_count(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]


# ---------------------------------------------------------------------------------
# Rendering (pure numpy)
# ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size) float32; cached, read-only."""
    c = np.arange(size, dtype=np.float32) + np.float32(0.5)
    xx, yy = np.meshgrid(c, c)  # xx varies along columns, yy along rows
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


@functools.lru_cache(maxsize=32)
def _bilinear_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index and weight vectors to upsample a (cells, cells) grid to (size, size)."""
    pos = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32((cells - 1) / size)
    i0 = np.minimum(pos.astype(np.int64), cells - 2)
    f = (pos - i0).astype(np.float32)
    for a in (i0, f):
        a.flags.writeable = False
    return i0, f, (1 - f).astype(np.float32)


def _polygon_mask(vertices: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorized over pixels and edges."""
    xi, yi = vertices[:, 0, None, None], vertices[:, 1, None, None]
    nxt = np.roll(vertices, -1, axis=0)
    xj, yj = nxt[:, 0, None, None], nxt[:, 1, None, None]
    straddles = (yi > yy) != (yj > yy)
    dy = np.where(yj == yi, np.float32(1), yj - yi)  # horizontal edges never straddle
    x_cross = (xj - xi) * (yy - yi) / dy + xi
    crossings = np.count_nonzero(straddles & (xx < x_cross), axis=0)
    return (crossings & 1).astype(bool)


def _shape_mask(label: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one shape given its circumradius, centre and rotation."""
    # Only test the pixels of the circumscribed circle's bounding box: 2-4x less work.
    x0, y0 = max(int(cx - radius), 0), max(int(cy - radius), 0)
    x1, y1 = min(int(cx + radius) + 1, size), min(int(cy + radius) + 1, size)
    xx, yy = _pixel_grid(size)
    xx, yy = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
    mask = np.zeros((size, size), dtype=bool)
    if label == "circle":
        dx, dy = xx - np.float32(cx), yy - np.float32(cy)
        mask[y0:y1, x0:x1] = dx * dx + dy * dy <= np.float32(radius * radius)
        return mask
    if label == "square":
        theta = angle + np.pi / 4 + np.arange(4) * (np.pi / 2)
        radii = np.full(4, radius)
    elif label == "triangle":
        theta = angle + np.arange(3) * (2 * np.pi / 3)
        radii = np.full(3, radius)
    elif label == "star":
        theta = angle + np.arange(10) * (np.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * _STAR_INNER_RATIO)
    else:
        raise ValueError(f"unknown shape {label!r}")
    vertices = np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)
    mask[y0:y1, x0:x1] = _polygon_mask(vertices.astype(np.float32), xx, yy)
    return mask


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, sigma: np.ndarray) -> np.ndarray:
    """Low-frequency noise (size, size, len(sigma)): a coarse random grid, bilinearly upsampled.

    Plain elementwise arithmetic (no BLAS), so results do not depend on the BLAS build.
    """
    grid = rng.standard_normal((cells, cells, len(sigma)), dtype=np.float32) * sigma
    i0, f, g = _bilinear_weights(size, cells)
    rows = grid[i0] * g[:, None, None] + grid[i0 + 1] * f[:, None, None]  # (size, cells, ch)
    return rows[:, i0] * g[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def _ramp(size: int, angle: float) -> np.ndarray:
    """(size, size) linear ramp along `angle`, 0 at one corner pixel and 1 at the opposite one."""
    xx, yy = _pixel_grid(size)
    cos, sin = np.cos(angle), np.sin(angle)
    lo = 0.5 * (cos + sin) + (size - 1) * (min(cos, 0.0) + min(sin, 0.0))
    scale = 1.0 / ((abs(cos) + abs(sin)) * (size - 1))
    return xx * np.float32(cos * scale) + yy * np.float32(sin * scale) - np.float32(lo * scale)


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray | None:
    """Optional (size, size) +-1 stripes or checkerboard at a random angle and period."""
    kind = rng.integers(3)  # 0: none, 1: stripes, 2: checker
    if not kind:
        return None
    xx, yy = _pixel_grid(size)
    period = size / rng.uniform(3, 8)
    psi = rng.uniform(0, np.pi)
    cos, sin = np.float32(np.cos(psi) / period), np.float32(np.sin(psi) / period)
    wave = np.floor(xx * cos + yy * sin).astype(np.int32)
    if kind == 2:
        wave += np.floor(yy * cos - xx * sin).astype(np.int32)
    return ((wave & 1) * 2 - 1).astype(np.float32)


def _foreground_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    """A random colour far from the mean background, so the shape stays clearly visible."""
    candidates = rng.uniform(0, 255, size=(64, 3))
    dist = np.linalg.norm(candidates - bg_mean, axis=1)
    far = np.flatnonzero(dist >= _MIN_FG_DISTANCE)
    return candidates[far[0]] if far.size else candidates[np.argmax(dist)]


def render_example(rng: np.random.Generator, size: int, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws one example: uint8 image (size, size, 3) and uint8 mask (size, size, 1) of 0/1.

    Background: random two-colour gradient + low-frequency colour noise + (2 times in 3)
    stripes or checker. Shape: a colour far from the background mean plus its own
    low-frequency noise. Per-pixel noise on everything.
    """
    radius = rng.uniform(0.3, 0.7) * size / 2  # circumradius: diameter 30%-70% of the side
    cx, cy = rng.uniform(radius, size - radius, size=2)  # fully inside
    angle = rng.uniform(0, 2 * np.pi)
    mask = _shape_mask(CLASS_NAMES[label], cx, cy, radius, angle, size)

    c0 = rng.uniform(0, 255, size=3)
    c1 = np.clip(c0 + rng.uniform(-70, 70, size=3), 0, 255)
    fg = _foreground_colour(rng, (c0 + c1) / 2)
    # Channels 0-2: background noise, 3-5: shape noise (weaker, so the shape reads as one object).
    noise = _smooth_noise(rng, size, int(rng.integers(3, 7)), np.float32([14, 14, 14, 7, 7, 7]))

    image = _ramp(size, rng.uniform(0, 2 * np.pi))[..., None] * (c1 - c0).astype(np.float32)
    image += c0.astype(np.float32)
    image += noise[..., :3]
    pattern = _pattern(rng, size)
    if pattern is not None:
        amp = rng.uniform(10, 25) * rng.choice([-1.0, 1.0], size=3)
        image += pattern[..., None] * amp.astype(np.float32)
    np.copyto(image, noise[..., 3:] + fg.astype(np.float32), where=mask[..., None])
    image += rng.integers(-10, 11, size=image.shape, dtype=np.int8)  # per-pixel noise, std ~6
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8), mask.astype(np.uint8)[..., None]


def render_multi_example(
    rng: np.random.Generator, size: int, grid: int, empty_cell_probability: float
) -> tuple[np.ndarray, list[int]]:
    """Draws one multi-label example: uint8 image (size, size, 3) and each cell's label.

    Cell labels are row-major class indices, -1 for an empty cell. The background is
    `render_example`'s (gradient + colour noise + optional stripes/checker) over the whole
    image; each shape sits fully inside its cell (diameter 50%-85% of the cell side, so a
    star keeps visible points at 32 px cells) in its own colour far from the background
    mean. A separate function, so the single-label configs' random streams are untouched.
    """
    cell = size / grid
    c0 = rng.uniform(0, 255, size=3)
    c1 = np.clip(c0 + rng.uniform(-70, 70, size=3), 0, 255)
    noise = _smooth_noise(rng, size, int(rng.integers(3, 7)), np.float32([14, 14, 14, 7, 7, 7]))
    image = _ramp(size, rng.uniform(0, 2 * np.pi))[..., None] * (c1 - c0).astype(np.float32)
    image += c0.astype(np.float32)
    image += noise[..., :3]
    pattern = _pattern(rng, size)
    if pattern is not None:
        amp = rng.uniform(10, 25) * rng.choice([-1.0, 1.0], size=3)
        image += pattern[..., None] * amp.astype(np.float32)
    labels: list[int] = []
    for row in range(grid):
        for col in range(grid):
            if rng.random() < empty_cell_probability:
                labels.append(-1)
                continue
            label = int(rng.integers(len(CLASS_NAMES)))
            radius = rng.uniform(0.5, 0.85) * cell / 2
            cx, cy = rng.uniform(radius + 1, cell - radius - 1, size=2) + np.array([col, row]) * cell
            mask = _shape_mask(CLASS_NAMES[label], cx, cy, radius, rng.uniform(0, 2 * np.pi), size)
            fg = _foreground_colour(rng, (c0 + c1) / 2)
            np.copyto(image, noise[..., 3:] + fg.astype(np.float32), where=mask[..., None])
            labels.append(label)
    image += rng.integers(-10, 11, size=image.shape, dtype=np.int8)  # per-pixel noise, std ~6
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8), labels


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(array: np.ndarray) -> bytes:
    """Encodes a uint8 (H, W, 1|3) array as PNG bytes.

    Why not `tf.io.encode_png`: run eagerly per image it costs ~0.35 ms, twice per
    example, a large share of the generation time on the quickstart's critical path;
    this numpy + zlib version is ~3x faster. Any PNG decoder (TFDS uses TF's) reads it.
    """
    h, w, c = array.shape
    rows = np.ascontiguousarray(array, dtype=np.uint8).reshape(h, w * c)
    if c == 3:  # PNG "Sub" filter: byte minus the same channel of the pixel to its left
        filt = 1
        src, rows = rows, rows.copy()
        rows[:, c:] -= src[:, :-c]  # uint8 wraps around, as PNG filters do
    else:  # masks are long runs of 0/1 and compress best unfiltered
        filt = 0
    raw = np.concatenate([np.full((h, 1), filt, np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2}[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------
# TFDS builder
# ---------------------------------------------------------------------------------


class TlkitShapes(tfds.core.GeneratorBasedBuilder):
    """Shapes (circle, square, star, triangle) on textured backgrounds: with masks, or several per image."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a checksums file next to `code_path`, but its default `code_path`
    # imports the `importlib_resources` backport, which pip only installs on Python < 3.9,
    # so preparing any package-defined builder fails on a plain install. Nothing is
    # downloaded here, so point it straight at this file.
    code_path = tfds.core.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # `default` first: tfds picks the first config when none is named.
    BUILDER_CONFIGS = [
        ShapesConfig(
            name="default",
            description="64x64 images, 3000/500/500 examples.",
            image_size=64,
            num_train=3000,
            num_validation=500,
            num_test=500,
            seed=0,
        ),
        ShapesConfig(
            name="tiny",
            description="32x32 images, 120/40/40 examples, for fast tests.",
            image_size=32,
            num_train=120,
            num_validation=40,
            num_test=40,
            seed=1,
        ),
        ShapesConfig(
            name="multi",
            description="Multi-label: 64x64 images, a 2x2 grid of cells each holding a shape or nothing, 2000/400/400.",
            image_size=64,
            num_train=2000,
            num_validation=400,
            num_test=400,
            seed=2,
            grid=2,
            # per cell, so that an image is empty with probability 0.08 (0.532**4)
            empty_cell_probability=0.08**0.25,
        ),
        ShapesConfig(
            name="multi_tiny",
            description="Multi-label like `multi`, at 32x32 with 160/60/60 examples, for fast tests.",
            image_size=32,
            num_train=160,
            num_validation=60,
            num_test=60,
            seed=3,
            grid=2,
            empty_cell_probability=0.08**0.25,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        if self.builder_config.grid:
            return self._multi_info()
        return self.dataset_info_from_configs(
            description=(
                "Procedurally generated shapes on noisy textured backgrounds, with a "
                "per-pixel mask of the shape (0 = background, 1 = shape). Built into tlkit "
                "so that examples and tests run offline."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), dtype=np.uint8),
                    "mask": tfds.features.Image(shape=(s, s, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _multi_info(self) -> tfds.core.DatasetInfo:
        """Multi-label features: the image and the distinct shapes in it (sorted, maybe none)."""
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=(
                "Procedurally generated shapes on noisy textured backgrounds, several per image: "
                "a grid of cells, each holding a random shape or nothing; `labels` lists the "
                "distinct shapes present (empty for an image with no shape). Built into tlkit so "
                "that examples and tests run offline."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), dtype=np.uint8),
                    "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "labels"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download: everything is rendered locally
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        split_index = SPLITS.index(split)
        if cfg.grid:
            yield from self._generate_multi_examples(split_index)
            return
        for i in range(cfg.split_count(split)):
            rng = np.random.default_rng([cfg.seed, split_index, i])
            label = i % len(CLASS_NAMES)  # balanced classes; TFDS shuffles the order
            image, mask = render_example(rng, cfg.image_size, label)
            yield i, {"image": encode_png(image), "mask": encode_png(mask), "label": label}

    def _generate_multi_examples(self, split_index: int):
        cfg = self.builder_config
        for i in range(cfg.split_count(SPLITS[split_index])):
            rng = np.random.default_rng([cfg.seed, split_index, i])
            image, cells = render_multi_example(rng, cfg.image_size, cfg.grid, cfg.empty_cell_probability)
            yield i, {"image": encode_png(image), "labels": sorted({c for c in cells if c >= 0})}


def prepare(config: str = "default", data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns the ready-to-read builder, generating the data first if it is not there yet.

    GCS is bypassed explicitly so that this works with no network at all.
    """
    builder = tfds.builder(f"{NAME}/{config}", data_dir=data_dir)
    if not builder.is_prepared():
        print(f"generating built-in dataset {NAME}/{config} into {builder.data_dir}", flush=True)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return builder
