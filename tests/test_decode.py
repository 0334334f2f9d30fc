"""Tests for tlkit.data.decode: every supported format decodes to RGB uint8 by content."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlkit.data.decode import (
    IMAGE_EXTENSIONS,
    check_image_bytes,
    decode_image,
    decode_image_file,
    scan_files,
)
from tlkit.errors import TlkitError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PETS_IMAGES = SHARED_DATA / "segmentation" / "oxford_pets_sample" / "images"

W, H = 7, 5  # odd width: exercises row padding in BMP
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


# ----------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (Pillow cannot write 16-bit RGB/RGBA): arr is [H, W, C] uint16, C in 1..4."""
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bmp(width: int, height: int, bits: int, compression: int, palette: bytes, pixels: bytes) -> bytes:
    """A hand-made BMP (for variants Pillow does not write)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835, len(palette) // 4, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def palette_image(mode: str = "P") -> Image.Image:
    """Blue image with a yellow top-left pixel, stored as palette indices 0/1."""
    img = Image.new(mode, (W, H), 0)
    img.putpalette(list(BLUE) + list(YELLOW) + [0] * (256 - 2) * 3)
    img.putpixel((0, 0), 1)
    return img


def animated(fmt: str, colours, mode: str = "RGB", **kw) -> bytes:
    frames = [Image.new(mode, (W, H), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    return buf.getvalue()


def noise_jpeg(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), "JPEG", quality=90)


def decode(data: bytes) -> np.ndarray:
    out = decode_image(tf.constant(data))
    assert out.dtype == tf.uint8
    assert out.shape.rank == 3 and out.shape[-1] == 3
    return out.numpy()


def assert_colour(pixel, expected, tol: int = 6) -> None:
    assert np.abs(np.asarray(pixel, int) - np.asarray(expected, int)).max() <= tol, (pixel, expected)


# ------------------------------------------------------------------------ each format

SOLID_CASES = {
    "jpeg": lambda: encode(Image.new("RGB", (W, H), RED), "JPEG", quality=95),
    "jpeg_progressive": lambda: encode(Image.new("RGB", (W, H), RED), "JPEG", quality=95, progressive=True),
    "jpeg_cmyk": lambda: encode(Image.new("CMYK", (W, H), (0, 255, 255, 0)), "JPEG", quality=95),
    "png_rgb": lambda: encode(Image.new("RGB", (W, H), RED), "PNG"),
    "png_rgba": lambda: encode(Image.new("RGBA", (W, H), (*RED, 40)), "PNG"),
    "gif": lambda: encode(Image.new("RGB", (W, H), RED), "GIF"),
    "bmp_24": lambda: encode(Image.new("RGB", (W, H), RED), "BMP"),
    "bmp_32": lambda: encode(Image.new("RGBA", (W, H), (*RED, 255)), "BMP"),
    "webp_lossy": lambda: encode(Image.new("RGB", (W, H), RED), "WEBP", quality=95),
    "webp_lossless": lambda: encode(Image.new("RGB", (W, H), RED), "WEBP", lossless=True),
    "webp_rgba": lambda: encode(Image.new("RGBA", (W, H), (*RED, 40)), "WEBP", lossless=True),
}


@pytest.mark.parametrize("name", sorted(SOLID_CASES))
def test_solid_red_decodes_red(name):
    out = decode(SOLID_CASES[name]())
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], RED)
    assert_colour(out[-1, -1], RED)


GRAY_CASES = {
    "jpeg_gray": lambda: encode(Image.new("L", (W, H), 100), "JPEG", quality=95),
    "png_gray": lambda: encode(Image.new("L", (W, H), 100), "PNG"),
    "png_gray_alpha": lambda: encode(Image.new("LA", (W, H), (100, 30)), "PNG"),
    "bmp_gray_8bit": lambda: encode(Image.new("L", (W, H), 100), "BMP"),
    "webp_gray": lambda: encode(Image.new("L", (W, H), 100), "WEBP", lossless=True),
}


@pytest.mark.parametrize("name", sorted(GRAY_CASES))
def test_grayscale_comes_out_with_equal_channels(name):
    out = decode(GRAY_CASES[name]())
    assert out.shape == (H, W, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert_colour(out[0, 0], (100, 100, 100), tol=3)


def test_rgba_png_drops_alpha_keeps_colour():
    img = Image.new("RGBA", (W, H), (10, 200, 30, 0))  # fully transparent: colour kept as stored
    out = decode(encode(img, "PNG"))
    assert out.shape == (H, W, 3)
    assert_colour(out[2, 3], (10, 200, 30), tol=0)


def test_png_16bit_gray_is_scaled_not_truncated():
    a = np.full((H, W), 65535, np.uint16)
    a[:, 3:] = 32768
    a[:, 5:] = 257
    data = encode(Image.fromarray(a), "PNG")
    assert data[24] == 16  # really a 16-bit PNG
    out = decode(data)
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], (255, 255, 255), tol=0)
    assert_colour(out[0, 3], (128, 128, 128), tol=0)
    assert_colour(out[0, 5], (1, 1, 1), tol=0)


def test_png_16bit_full_range_matches_round_v_over_257():
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = decode(encode(Image.fromarray(v), "PNG"))[..., 0].astype(int)
    assert (out == np.round(v / 257.0)).all()


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png_16bit_colour_and_alpha(channels):
    a = np.zeros((H, W, channels), np.uint16)
    if channels == 2:  # gray + alpha
        a[..., 0], a[..., 1] = 32768, 1000
        expected = (128, 128, 128)
    else:
        a[..., 0], a[..., 1], a[..., 2] = 65535, 32768, 0
        if channels == 4:
            a[..., 3] = 1000
        expected = (255, 128, 0)
    out = decode(png16(a))
    assert out.shape == (H, W, 3)
    assert_colour(out[1, 1], expected, tol=0)


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_colours(transparency):
    kw = {"transparency": 0} if transparency else {}
    out = decode(encode(palette_image(), "PNG", **kw))
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], YELLOW, tol=0)
    assert_colour(out[-1, -1], BLUE, tol=0)


def test_palette_bmp_8bit_colours_not_indices():
    data = encode(palette_image(), "BMP")
    assert struct.unpack_from("<H", data, 28)[0] == 8
    out = decode(data)
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], YELLOW, tol=0)
    assert_colour(out[-1, -1], BLUE, tol=0)


def test_palette_bmp_random_palette_matches_pillow():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (13, 11), dtype=np.uint8), "P")
    img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    data = encode(img, "BMP")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode(data), expected)


def test_palette_bmp_short_palette():
    pixels = bytes([1] * 8) * 4  # 8x4, index 1 everywhere; 2-colour palette: red, green (BGR0)
    data = bmp(8, 4, 8, 0, bytes([0, 0, 255, 0, 0, 255, 0, 0]), pixels)
    out = decode(data)
    assert out.shape == (4, 8, 3)
    assert_colour(out[0, 0], GREEN, tol=0)


def test_gif_animated_gives_first_frame():
    out = decode(animated("GIF", [RED, GREEN, BLUE]))
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], RED)
    assert_colour(out[-1, -1], RED)


def test_gif_palette_with_transparency():
    out = decode(encode(palette_image(), "GIF", transparency=0))
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], YELLOW, tol=0)


def test_webp_animated_with_alpha_gives_first_frame():
    # Semi-transparent frames: Pillow (libwebp) drops the alpha flag when every frame is opaque.
    out = decode(animated("WEBP", [(*RED, 200), (*GREEN, 200)], mode="RGBA", lossless=True))
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], RED)


def test_webp_animated_without_alpha_is_reported_not_crashing():
    data = animated("WEBP", [RED, GREEN])
    reason = check_image_bytes(data)
    assert reason is not None and "animated" in reason
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(tf.constant(data))


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: encode(Image.new("1", (9, 3), 1), "BMP"), "1-bit"),
        (lambda: bmp(8, 4, 4, 0, bytes([0, 0, 255, 0]) * 2, bytes([0x11] * 4) * 4), "4-bit"),
        # RLE8 padded to the uncompressed size: TF alone would decode it as garbage.
        (lambda: bmp(8, 4, 8, 1, bytes([0, 0, 255, 0]) * 2, (bytes([8, 1, 0, 0]) * 4 + bytes([0, 1])).ljust(32, b"\0")), "RLE8"),
    ],
)
def test_unsupported_bmp_variants_are_bad_files(make, words):
    data = make()
    reason = check_image_bytes(data)
    assert reason is not None and "BMP" in reason and words in reason
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(tf.constant(data))


def test_top_down_bmp():
    img = Image.new("RGB", (W, H), BLUE)
    img.putpixel((0, 0), RED)
    data = bytearray(encode(img, "BMP"))
    offset = struct.unpack_from("<I", data, 10)[0]
    stride = (W * 3 + 3) // 4 * 4
    rows = [data[offset + i * stride : offset + (i + 1) * stride] for i in range(H)]
    data[22:26] = struct.pack("<i", -H)
    data[offset:] = b"".join(reversed(rows))
    out = decode(bytes(data))
    assert_colour(out[0, 0], RED, tol=0)
    assert_colour(out[-1, -1], BLUE, tol=0)


# -------------------------------------------------------------- by content, in graph


def test_png_named_jpg_decodes_by_content(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(Image.new("RGBA", (W, H), (*GREEN, 128)), "PNG"))
    out = decode_image_file(str(path)).numpy()
    assert out.shape == (H, W, 3)
    assert_colour(out[0, 0], GREEN, tol=0)


def test_decode_image_in_dataset_map(tmp_path):
    makers = {
        "a.jpg": lambda: SOLID_CASES["jpeg"](),
        "b.jpg": lambda: encode(Image.new("RGBA", (W, H), (*RED, 10)), "PNG"),  # mislabelled
        "c.png": lambda: png16(np.full((H, W, 3), [65535, 0, 0], np.uint16)),
        "d.gif": lambda: animated("GIF", [RED, BLUE]),
        "e.bmp": lambda: encode(Image.new("RGB", (W, H), RED), "BMP"),
        "f.bmp": lambda: bmp(8, 4, 8, 0, bytes([0, 0, 255, 0]), bytes(32)),  # 8-bit palette, red
        "g.webp": lambda: encode(Image.new("RGBA", (W, H), (*RED, 99)), "WEBP", lossless=True),
    }
    paths = []
    for name, make in makers.items():
        (tmp_path / name).write_bytes(make())
        paths.append(str(tmp_path / name))
    ds = tf.data.Dataset.from_tensor_slices(paths).map(lambda p: decode_image(tf.io.read_file(p)))
    assert ds.element_spec.shape.as_list() == [None, None, 3]
    assert ds.element_spec.dtype == tf.uint8
    images = list(ds.as_numpy_iterator())
    assert len(images) == len(paths)
    for path, img in zip(paths, images):
        assert img.ndim == 3 and img.shape[-1] == 3, path
        assert_colour(img[0, 0], RED), path


def test_decode_image_in_tf_function():
    fn = tf.function(lambda c: tf.image.resize(decode_image(c), [4, 4]))
    out = fn(tf.constant(SOLID_CASES["png_rgb"]()))
    assert out.shape == (4, 4, 3)


def test_decode_image_file_raises_tlkit_error(tmp_path):
    bad = tmp_path / "page.jpg"
    bad.write_bytes(b"<html><body>404</body></html>")
    with pytest.raises(TlkitError, match="not an image"):
        decode_image_file(str(bad))
    with pytest.raises(TlkitError, match="cannot read"):
        decode_image_file(str(tmp_path / "missing.jpg"))


# --------------------------------------------------------------------- bad bytes


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty file"),
        (b"just some text\n", "not an image"),
        (b"<html><head><title>403 Forbidden</title></head></html>", "<html"),
        (bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8)), "not an image"),
        (b"\xff\xd8\xff" + b"\0" * 100, "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a", "GIF"),
        (b"BM", "BMP"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "WebP"),
        (b"II*\0" + b"\0" * 20, "unsupported format (TIFF)"),
    ],
)
def test_check_image_bytes_gives_reason(data, words):
    reason = check_image_bytes(data)
    assert isinstance(reason, str) and words in reason


def test_truncated_jpeg_is_bad():
    data = noise_jpeg()
    assert check_image_bytes(data) is None
    reason = check_image_bytes(data[: len(data) // 2])
    assert reason is not None and reason.startswith("truncated or corrupt JPEG")


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP"])
def test_truncated_other_formats_are_bad(fmt):
    rng = np.random.default_rng(4)
    data = encode(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), fmt)
    assert check_image_bytes(data) is None
    assert check_image_bytes(data[: len(data) // 2]) is not None


def test_check_image_bytes_never_raises_on_mutations():
    samples = [SOLID_CASES[k]() for k in sorted(SOLID_CASES)] + [noise_jpeg(), animated("WEBP", [RED, GREEN])]
    rnd = random.Random(0)
    for _ in range(300):
        data = bytearray(rnd.choice(samples))
        if rnd.random() < 0.3:
            data = data[: rnd.randrange(len(data))]
        else:
            for _ in range(rnd.randint(1, 6)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        result = check_image_bytes(bytes(data))
        assert result is None or isinstance(result, str)


# ---------------------------------------------------------------------- scan_files


def test_scan_files_separates_and_keeps_order(tmp_path):
    entries = [
        ("1.jpg", SOLID_CASES["jpeg"]()),
        ("2.txt.jpg", b"hello"),
        ("3.png", SOLID_CASES["png_rgba"]()),
        ("4.jpg", b""),
        ("5.gif", animated("GIF", [RED, GREEN])),
        ("6.jpg", noise_jpeg()[:500]),
        ("7.bmp", encode(palette_image(), "BMP")),
    ]
    paths = []
    for name, data in entries:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    (tmp_path / "dir.jpg").mkdir()
    paths.insert(2, str(tmp_path / "dir.jpg"))
    paths.append(str(tmp_path / "gone.jpg"))

    good, bad = scan_files(paths, workers=3, progress=False)
    names = lambda ps: [Path(p).name for p in ps]  # noqa: E731
    assert names(good) == ["1.jpg", "3.png", "5.gif", "7.bmp"]
    assert names(p for p, _ in bad) == ["2.txt.jpg", "dir.jpg", "4.jpg", "6.jpg", "gone.jpg"]
    reasons = dict((Path(p).name, r) for p, r in bad)
    assert "not an image" in reasons["2.txt.jpg"]
    assert "directory" in reasons["dir.jpg"]
    assert reasons["4.jpg"] == "empty file"
    assert "JPEG" in reasons["6.jpg"]
    assert "no such file" in reasons["gone.jpg"]
    assert scan_files([], progress=False) == ([], [])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read files with mode 000")
def test_scan_files_unreadable(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(SOLID_CASES["jpeg"]())
    path.chmod(0)
    try:
        good, bad = scan_files([str(path)], progress=False)
    finally:
        path.chmod(0o644)
    assert good == [] and "permission" in bad[0][1]


def test_scan_files_permission_error_is_a_reason(tmp_path, monkeypatch):
    import tlkit.data.decode as decode_module

    path = tmp_path / "locked.jpg"
    path.write_bytes(SOLID_CASES["jpeg"]())

    def locked_open(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode_module, "open", locked_open, raising=False)
    good, bad = scan_files([str(path)], workers=1, progress=False)
    assert good == [] and bad == [(str(path), "cannot read file (permission denied)")]


def test_scan_files_progress_on_stderr(tmp_path, capsys):
    data = SOLID_CASES["png_rgb"]()
    paths = []
    for i in range(201):
        p = tmp_path / f"{i:03d}.png"
        p.write_bytes(data)
        paths.append(p)
    good, bad = scan_files(paths, workers=2, progress=True)
    assert good == [str(p) for p in paths] and bad == []
    captured = capsys.readouterr()
    assert "Checking 201 images" in captured.err
    assert captured.out == ""
    scan_files(paths[:10], progress=True)
    assert "Checking" not in capsys.readouterr().err  # small scans stay quiet


def test_image_extensions():
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"} <= IMAGE_EXTENSIONS
    assert isinstance(IMAGE_EXTENSIONS, frozenset)


# ----------------------------------------------------------------- real messy files


@pytest.mark.skipif(not PETS_IMAGES.is_dir(), reason=f"shared data not found at {PETS_IMAGES}")
@pytest.mark.parametrize("name, magic", [("Abyssinian_34.jpg", b"GIF8"), ("Abyssinian_5.jpg", b"\x89PNG")])
def test_real_mislabelled_files_decode(name, magic):
    path = PETS_IMAGES / name
    data = path.read_bytes()
    assert data.startswith(magic)  # the dirt this test is about is still there
    assert check_image_bytes(data) is None
    out = decode_image_file(str(path)).numpy()
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 3
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 2


@pytest.mark.skipif(not (SHARED_DATA / "classification" / "flowers_128").is_dir(), reason="shared flowers data absent")
def test_real_jpeg_cut_in_half_is_bad():
    path = next((SHARED_DATA / "classification" / "flowers_128").rglob("*.jpg"))
    data = path.read_bytes()
    assert check_image_bytes(data) is None
    assert check_image_bytes(data[: len(data) // 2]).startswith("truncated or corrupt JPEG")
