"""Turn image files into RGB uint8 tensors, by content rather than file extension.

Real image folders are dirty: a ``.jpg`` may really be a GIF or an RGBA PNG, a
download may be an HTML error page, a copy may be truncated. Such a file must
never crash training half-way through an epoch, so tlkit lists folders by
extension (:data:`IMAGE_EXTENSIONS`), decodes by content (:func:`decode_image`)
and checks every file once before training (:func:`scan_files`), with exactly the
same decoding path that the ``tf.data`` pipeline uses later.

What :func:`decode_image` does per format (verified on TensorFlow 2.21, see
``tests/test_decode.py``):

* JPEG (baseline, progressive, grayscale, CMYK): ``tf.io.decode_image``. A
  truncated JPEG is an error (TF does not "recover" truncated data by default).
* PNG 8-bit (RGB, RGBA, gray, gray+alpha, palette, palette with ``tRNS``):
  ``tf.io.decode_image``. Alpha is dropped (the colour values are kept as
  stored, *not* composited on a background): models take 3 channels.
* PNG 16-bit: decoded as uint16 and scaled with ``round(v / 257)`` so 65535 ->
  255 and 32768 -> 128 exactly (TF's own uint8 path keeps the high byte, which
  is off by up to one level).
* GIF: the first frame only (also for animated GIFs).
* BMP 24/32-bit: ``tf.io.decode_bmp``, alpha/padding byte dropped.
* BMP 8-bit palette: TF returns the palette *indices* as one gray channel,
  which is silently wrong, so tlkit reads the palette from the header and looks
  the colours up itself (in graph ops). 8-bit grayscale BMPs are palette BMPs
  with a gray ramp, so they come out right as well.
* BMP 1/4/16-bit and RLE-compressed BMP: not decodable by TF (RLE would even be
  decoded as garbage), so they raise and are reported as bad files.
* WebP (lossy, lossless, with alpha, animated *with* alpha -> first frame):
  supported. Animated WebP *without* alpha is not: TF 2.21 refuses it with
  ``channels=3/4`` and corrupts the heap with ``channels=0``, so tlkit never asks
  TF for ``channels=0`` on WebP and reports those files as bad.
* TIFF, HEIC/AVIF, PSD, ICO, SVG, PDF, ...: not supported (bad files).

Memory stays bounded whatever a file claims (:data:`MAX_DECODE_PIXELS`): a JPEG
larger than the bound is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
scaling: cheap, and the model resizes far below that anyway); any other format
larger than the bound, and a JPEG above 64 times the bound, is refused with
``image too large`` before a pixel is decoded (the size is read from the header).

EXIF orientation is *not* applied: pixels are used as stored, exactly as the
exported model's ``serving_bytes`` signature and ``tf.io.decode_image`` see them,
so training and serving agree. Auto-orient photos beforehand if it matters
(e.g. ``exiftran -ai *.jpg`` or ``mogrify -auto-orient``).
"""

from __future__ import annotations

import os
import re
import struct
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import tensorflow as tf

from tlkit.errors import TlkitError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DECODE_PIXELS",
    "check_file",
    "check_image_bytes",
    "check_decodes",
    "decode_for_size",
    "decode_resized",
    "decode_image",
    "decode_image_file",
    "is_url",
    "jpeg_ratio",
    "original_size",
    "resize_image",
    "to_model_size",
    "scan_files",
]

#: Lowercase file extensions that tlkit lists as images when it walks a folder.
#: Listing is by extension, but decoding is by content: a PNG named ``.jpg`` works.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp"}
)

#: Most pixels one decoded image may hold (40 MP = 120 MB as RGB uint8). Bigger
#: JPEGs are decoded at a reduced scale; bigger images of other formats are refused.
MAX_DECODE_PIXELS: int = 40_000_000
_JPEG_RATIOS = (1, 2, 4, 8)  # the scales libjpeg can decode at

# Show a progress bar only when the scan takes long enough for it to matter.
_PROGRESS_MIN_FILES = 200
_HEADER_LEN = 64  # covers the BMP info header fields read below (up to byte 50)


# --------------------------------------------------------------------------- graph ops


def _header(contents: tf.Tensor) -> tf.Tensor:
    """First ``_HEADER_LEN`` bytes as uint8, zero-padded, so short files never fail here."""
    head = tf.strings.substr(contents, 0, _HEADER_LEN)  # clipped, never raises at pos 0
    padded = tf.strings.join([head, tf.constant(b"\0" * _HEADER_LEN)])
    padded = tf.strings.substr(padded, 0, _HEADER_LEN)
    return tf.reshape(tf.io.decode_raw(padded, tf.uint8), [_HEADER_LEN])


def _u16(h: tf.Tensor, i: int) -> tf.Tensor:
    h = tf.cast(h, tf.int64)
    return h[i] + h[i + 1] * 256


def _u32(h: tf.Tensor, i: int) -> tf.Tensor:
    h = tf.cast(h, tf.int64)
    return h[i] + h[i + 1] * 256 + h[i + 2] * 65536 + h[i + 3] * 16777216


def _starts(h: tf.Tensor, magic: bytes, at: int = 0) -> tf.Tensor:
    return tf.reduce_all(tf.equal(h[at : at + len(magic)], tf.constant(list(magic), tf.uint8)))


def _be32(h: tf.Tensor, i: int) -> tf.Tensor:
    h = tf.cast(h, tf.int64)
    return h[i] * 16777216 + h[i + 1] * 65536 + h[i + 2] * 256 + h[i + 3]


def _header_dims(h: tf.Tensor) -> tf.Tensor:
    """[width, height] announced by a PNG/GIF/BMP/WebP header, [0, 0] when unknown (JPEG, other)."""
    zero = tf.constant(0, tf.int64)
    bmp_w, bmp_h = _u32(h, 18), _u32(h, 22)
    bmp_h = tf.where(bmp_h >= 2**31, 2**32 - bmp_h, bmp_h)  # negative height: a top-down BMP
    vp8l = _u32(h, 21)
    candidates = [
        (_starts(h, b"\x89PNG\r\n\x1a\n"), _be32(h, 16), _be32(h, 20)),
        (_starts(h, b"GIF8"), _u16(h, 6), _u16(h, 8)),
        (_starts(h, b"BM"), tf.where(bmp_w >= 2**31, zero, bmp_w), bmp_h),
        (_starts(h, b"VP8X", 12), 1 + _u16(h, 24) + tf.cast(h[26], tf.int64) * 65536,
         1 + _u16(h, 27) + tf.cast(h[29], tf.int64) * 65536),
        (_starts(h, b"VP8L", 12), 1 + tf.bitwise.bitwise_and(vp8l, 0x3FFF),
         1 + tf.bitwise.bitwise_and(tf.bitwise.right_shift(vp8l, 14), 0x3FFF)),
        (_starts(h, b"VP8 ", 12), tf.bitwise.bitwise_and(_u16(h, 26), 0x3FFF),
         tf.bitwise.bitwise_and(_u16(h, 28), 0x3FFF)),
    ]
    dims = tf.stack([zero, zero])
    for match, width, height in reversed(candidates):
        dims = tf.where(match, tf.stack([width, height]), dims)
    return dims


def jpeg_ratio(height: tf.Tensor, width: tf.Tensor, min_size: tf.Tensor | int | None = None) -> tf.Tensor:
    """The DCT scale (1, 2, 4 or 8) a JPEG of this size is decoded at.

    The largest scale that fits MAX_DECODE_PIXELS, or, given ``min_size``, the
    smallest decoded size whose both sides still cover ``min_size`` (then a later
    resize only shrinks): libjpeg skips most of the inverse DCT at 1/8 scale, so a
    1024x768 photo for a 224-pixel model costs half a full decode, for a 64-pixel
    one about a third.
    """
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    pixels = height * width
    ratio = tf.constant(_JPEG_RATIOS[-1], tf.int64)
    for r in reversed(_JPEG_RATIOS[:-1]):  # the smallest ratio that fits the bound
        ratio = tf.where(pixels <= MAX_DECODE_PIXELS * r * r, tf.constant(r, tf.int64), ratio)
    if min_size is not None:
        side = tf.cast(min_size, tf.int64)
        cover = tf.constant(1, tf.int64)
        for r in _JPEG_RATIOS[1:]:  # the largest ratio whose scaled sides (rounded up) still cover min_size
            fits = tf.logical_and((height + r - 1) // r >= side, (width + r - 1) // r >= side)
            cover = tf.where(fits, tf.constant(r, tf.int64), cover)
        ratio = tf.maximum(ratio, cover)
    return ratio


def _decode_jpeg(contents: tf.Tensor, min_size: tf.Tensor | int | None = None) -> tf.Tensor:
    """A JPEG at the scale :func:`jpeg_ratio` picks (header read first, so the bound holds before decoding)."""
    shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)  # header only
    pixels = shape[0] * shape[1]
    check = tf.debugging.Assert(
        pixels <= MAX_DECODE_PIXELS * _JPEG_RATIOS[-1] ** 2, ["image too large", shape[1], shape[0]]
    )
    ratio = jpeg_ratio(shape[0], shape[1], min_size)

    def at(r: int):
        return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=r)

    with tf.control_dependencies([check]):
        branches = [(tf.equal(ratio, r), at(r)) for r in _JPEG_RATIOS[:-1]]
        return tf.identity(tf.case(branches, default=at(_JPEG_RATIOS[-1])))


def _decode_generic(contents: tf.Tensor) -> tf.Tensor:
    # channels=3 converts gray/palette/CMYK to RGB and drops alpha for JPEG/PNG/GIF.
    return tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)


def _decode_png16(contents: tf.Tensor) -> tf.Tensor:
    img = tf.io.decode_png(contents, channels=3, dtype=tf.uint16)
    return tf.cast(tf.round(tf.cast(img, tf.float32) / 257.0), tf.uint8)


def _decode_bmp_palette(contents: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    # TF returns an 8-bit BMP's palette indices as a gray image: look up the colours.
    indices = tf.io.decode_bmp(contents, channels=0)  # [H, W, 1] uint8 indices
    length = tf.strings.length(contents, unit="BYTE")
    offset = tf.minimum(14 + _u32(h, 14), tf.cast(length, tf.int64))  # after the info header
    raw = tf.strings.substr(
        tf.strings.join([contents, tf.constant(b"\0" * 1024)]), tf.cast(offset, tf.int32), 1024
    )
    palette = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [256, 4])  # B, G, R, reserved
    n_colors = _u32(h, 46)
    n_colors = tf.where(tf.logical_or(n_colors <= 0, n_colors > 256), tf.constant(256, tf.int64), n_colors)
    valid = tf.range(256, dtype=tf.int64) < n_colors
    palette = tf.where(valid[:, None], tf.reverse(palette[:, :3], axis=[1]), tf.zeros_like(palette[:, :3]))
    return tf.gather(palette, tf.cast(indices[:, :, 0], tf.int32))


def _decode_bmp(contents: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    info_size = _u32(h, 14)
    bits = _u16(h, 28)
    compression = _u32(h, 30)
    # TF ignores the compression field and would decode RLE data as garbage.
    ok = tf.logical_and(
        info_size >= 40, tf.logical_or(tf.equal(compression, 0), tf.equal(compression, 3))
    )
    check = tf.debugging.Assert(ok, ["unsupported BMP variant (compressed or OS/2 header)"])
    with tf.control_dependencies([check]):
        img = tf.cond(
            tf.equal(bits, 8),
            lambda: _decode_bmp_palette(contents, h),
            lambda: tf.io.decode_bmp(contents, channels=3),
        )
        return tf.identity(img)


def _webp_has_alpha(h: tf.Tensor) -> tf.Tensor:
    vp8l_alpha = tf.logical_and(_starts(h, b"VP8L", 12), tf.not_equal(tf.bitwise.bitwise_and(h[24], 0x10), 0))
    vp8x_alpha = tf.logical_and(_starts(h, b"VP8X", 12), tf.not_equal(tf.bitwise.bitwise_and(h[20], 0x10), 0))
    return tf.logical_or(vp8l_alpha, vp8x_alpha)


def _decode_webp(contents: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    # Never channels=0 on WebP: for an animated WebP without alpha TF 2.21 overflows
    # its buffer. Asking for the channel count the header announces is safe: a
    # mismatch is a clean InvalidArgumentError.
    return tf.cond(
        _webp_has_alpha(h),
        lambda: tf.io.decode_image(contents, channels=4, expand_animations=False)[:, :, :3],
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )


def decode_image(contents: tf.Tensor, min_size: tf.Tensor | int | None = None) -> tf.Tensor:
    """Decode one encoded image (scalar string tensor) to RGB uint8 ``[H, W, 3]``.

    With ``min_size`` a JPEG is decoded at the smallest DCT scale whose sides
    still cover ``min_size`` (:func:`jpeg_ratio`): for a pipeline that resizes to
    that size next. Other formats decode at full size either way.

    The format is recognised from the bytes, not the file name, so mislabelled
    files work. Safe in graph mode (``tf.data.Dataset.map``, ``tf.function``);
    the result has static rank 3 and channel dimension 3 so later ops (resize,
    augmentation) can rely on it. Alpha channels are dropped, not composited:
    models expect 3 channels and transparency is rare in training photos. Raises
    ``tf.errors.InvalidArgumentError`` for undecodable bytes, which is why
    :func:`scan_files` runs this same function over every file beforehand.
    """
    contents = tf.convert_to_tensor(contents, dtype=tf.string)
    # JPEG first, on its three magic bytes alone: the header fields below are for the other formats
    # (skipping them for photos cut the cost of a 1/8-scale decode by about a tenth)
    img = tf.cond(_is_jpeg(contents), lambda: _decode_jpeg(contents, min_size), lambda: _decode_other(contents))
    return tf.ensure_shape(img, [None, None, 3])


def _is_jpeg(contents: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")


def _decode_other(contents: tf.Tensor) -> tf.Tensor:
    """Every format but JPEG: the announced size is bounded before a pixel is decoded."""
    h = _header(contents)
    is_png16 = tf.logical_and(_starts(h, b"\x89PNG\r\n\x1a\n"), tf.equal(h[24], 16))
    is_bmp = _starts(h, b"BM")
    is_webp = tf.logical_and(_starts(h, b"RIFF"), _starts(h, b"WEBP", 8))
    dims = _header_dims(h)
    fits = tf.debugging.Assert(dims[0] * dims[1] <= MAX_DECODE_PIXELS, ["image too large", dims[0], dims[1]])
    with tf.control_dependencies([fits]):
        img = tf.cond(
            is_png16,
            lambda: _decode_png16(contents),
            lambda: tf.cond(
                is_bmp,
                lambda: _decode_bmp(contents, h),
                lambda: tf.cond(is_webp, lambda: _decode_webp(contents, h), lambda: _decode_generic(contents)),
            ),
        )
        return tf.identity(img)


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """The one resize used in training, evaluation and the export: bilinear, antialiased, float32 out."""
    return tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)


def decode_resized(contents: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded bytes -> uint8 ``[size, size, 3]``: what the training cache holds, decoded once at the cheapest
    JPEG scale that covers ``size`` and resized once; an image without pixels raises here, not later."""
    return decode_for_size(contents, size)[0]


def to_model_size(image: tf.Tensor, size: int) -> tf.Tensor:
    """A decoded image -> uint8 ``[size, size, 3]`` (rounded, as the cache keeps it)."""
    shape = tf.shape(image)
    check = tf.debugging.Assert(shape[0] * shape[1] > 0, ["image has no pixels", shape[1], shape[0]])
    with tf.control_dependencies([check]):
        return tf.cast(tf.round(resize_image(image, size)), tf.uint8)


def original_size(contents: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """[height, width] of the stored image (a JPEG's from its header: ``image`` may be DCT-scaled)."""
    return tf.cond(
        _is_jpeg(contents),
        lambda: tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64),
        lambda: tf.cast(tf.shape(image)[:2], tf.int64),
    )


_decode_graph_lock = threading.Lock()
_decode_graph: tf.types.experimental.GenericFunction | None = None


def _compiled_decode() -> tf.types.experimental.GenericFunction:
    """:func:`decode_image` as one traced graph: much cheaper per call than eager ops."""
    global _decode_graph
    with _decode_graph_lock:
        if _decode_graph is None:
            fn = tf.function(
                decode_image, input_signature=[tf.TensorSpec([], tf.string)], autograph=False
            )
            fn.get_concrete_function()  # trace now: a tracing bug must raise, not look like a bad file
            _decode_graph = fn
        return _decode_graph


_graphs: dict[str, tf.types.experimental.GenericFunction] = {}


def _graph(name: str, fn, signature: list[tf.TensorSpec]) -> tf.types.experimental.GenericFunction:
    with _decode_graph_lock:
        if name not in _graphs:
            _graphs[name] = tf.function(fn, input_signature=signature, autograph=False)
        return _graphs[name]


def decode_for_size(contents: tf.Tensor, size: tf.Tensor | int) -> tuple[tf.Tensor, tf.Tensor]:
    """(uint8 ``[size, size, 3]``, stored ``[height, width]``) from encoded bytes, through one graph traced
    once per process (every tf.data pipeline that calls it reuses it instead of tracing the decoder again)."""
    fn = _graph("sized", _decode_for_size, [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)])
    image, hw = fn(contents, tf.cast(size, tf.int32))
    if isinstance(size, int):
        image = tf.ensure_shape(image, [size, size, 3])
    return image, hw


def _decode_for_size(contents: tf.Tensor, size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image = decode_image(contents, min_size=size)
    return to_model_size(image, size), original_size(contents, image)


def check_decodes(contents: tf.Tensor) -> tf.Tensor:
    """[height, width] of an image that decodes (at the cheapest JPEG scale: every byte is still read), else
    raises as :func:`decode_image` does; one graph traced once per process."""
    return _graph("check", _check_decodes, [tf.TensorSpec([], tf.string)])(contents)


def _check_decodes(contents: tf.Tensor) -> tf.Tensor:
    image = decode_image(contents, min_size=1)
    hw = original_size(contents, image)
    check = tf.debugging.Assert(hw[0] * hw[1] > 0, ["image has no pixels"])
    with tf.control_dependencies([check]):
        return tf.identity(hw)


# ------------------------------------------------------------------------ diagnostics


def _sniff(data: bytes) -> str | None:
    """Name of the format announced by the magic bytes (for messages only)."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] == b"\x89PNG":
        return "PNG"
    if data[:4] == b"GIF8":
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _sniff_unsupported(data: bytes) -> str | None:
    """Name of a known image/document format that TF cannot decode."""
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "TIFF"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIC/HEIF"
        return "MP4/QuickTime (video)"
    if data[:4] == b"8BPS":
        return "Photoshop PSD"
    if data[:4] == b"\0\0\1\0":
        return "ICO"
    if data[:4] == b"%PDF":
        return "PDF"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\0\0\0\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if data[:4] == b"RIFF":
        return "RIFF (not WebP)"
    return None


def _bmp_problem(data: bytes) -> str | None:
    if len(data) < 34:
        return None
    info_size, = struct.unpack_from("<I", data, 14)
    bits, = struct.unpack_from("<H", data, 28)
    compression, = struct.unpack_from("<I", data, 30)
    if info_size < 40:
        return "unsupported BMP (OS/2 header); re-save as 24-bit BMP or PNG"
    if compression not in (0, 3):
        kind = {1: "RLE8", 2: "RLE4", 4: "embedded JPEG", 5: "embedded PNG"}.get(compression, f"type {compression}")
        return f"unsupported BMP ({kind} compression); re-save as 24-bit BMP or PNG"
    if bits not in (8, 24, 32):
        return f"unsupported BMP ({bits}-bit); TensorFlow decodes 8-, 24- and 32-bit BMP only"
    return None


def _webp_problem(data: bytes) -> str | None:
    if data[12:16] == b"VP8X" and len(data) > 20:
        flags = data[20]
        if flags & 0x02 and not flags & 0x10:
            return "unsupported WebP (animated without alpha; TensorFlow cannot decode it)"
    return None


def _clean_tf_message(err: BaseException) -> str:
    msg = getattr(err, "message", None) or str(err)
    m = re.search(r"assertion failed: \[(.*?)\]", msg, re.S) or re.search(
        r"Summarized data: b'(.*?)'", msg, re.S
    )
    if m:
        return m.group(1)
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
    msg = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", msg)
    msg = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", msg)
    lines = [line.strip() for line in msg.strip().splitlines() if line.strip()]
    msg = lines[-1] if lines else type(err).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


def _too_large(err: BaseException, fmt: str | None) -> str | None:
    """The readable reason for the decode guard's "image too large" assertion, if it fired."""
    msg = getattr(err, "message", None) or str(err)
    m = re.search(r"image too large\]\s*\[(\d+)\]\s*\[(\d+)\]", msg)
    if not m:
        return None
    width, height = int(m.group(1)), int(m.group(2))
    scaled = " (a JPEG is decoded at up to 1/8 scale, and this one is still larger)" if fmt == "JPEG" else ""
    return (
        f"image too large: {width}x{height} {fmt or ''} ({width * height / 1e6:.3g} megapixels); tlkit decodes at "
        f"most {MAX_DECODE_PIXELS / 1e6:.3g} megapixels{scaled}: downscale it"
    ).replace("  ", " ")


def _reason_for_failure(data: bytes, err: BaseException) -> str:
    fmt = _sniff(data)
    large = _too_large(err, fmt)
    if large is not None:
        return large
    if fmt is None:
        other = _sniff_unsupported(data)
        if other is not None:
            return f"unsupported format ({other})"
        return f"not an image (starts with {data[:8]!r})"
    special = _bmp_problem(data) if fmt == "BMP" else _webp_problem(data) if fmt == "WebP" else None
    if special is not None:
        return special
    return f"truncated or corrupt {fmt}: {_clean_tf_message(err)}"


def _try_decode(data: bytes) -> tuple[tf.Tensor | None, str | None]:
    """(image, None) or (None, reason); never raises."""
    if not data:
        return None, "empty file"
    try:
        img = _compiled_decode()(tf.constant(data, dtype=tf.string))
    except (tf.errors.OpError, ValueError, TypeError, MemoryError) as err:
        return None, _reason_for_failure(data, err)
    except Exception as err:  # noqa: BLE001 - a bad file must never abort a scan
        return None, f"cannot decode: {type(err).__name__}: {_clean_tf_message(err)}"
    height, width = int(img.shape[0]), int(img.shape[1])
    if height == 0 or width == 0:
        return None, f"image has no pixels ({width}x{height})"
    return img, None


# ------------------------------------------------------------------------- public API


def check_image_bytes(data: bytes) -> str | None:
    """``None`` if ``data`` decodes to a non-empty image via :func:`decode_image`, else why not.

    Used to weed out bad files before training: the reason is a short human
    text such as ``"empty file"``, ``"not an image (starts with b'<html>\\n<')"``
    or ``"truncated or corrupt JPEG: ..."``. Never raises, whatever the bytes.
    """
    try:
        _, reason = _try_decode(bytes(data))
    except Exception as err:  # noqa: BLE001 - documented: never raises
        return f"cannot decode: {type(err).__name__}"
    return reason


def decode_image_file(path: str | os.PathLike[str]) -> tf.Tensor:
    """Eagerly decode the image at ``path`` to RGB uint8 ``[H, W, 3]`` (for previews, predict).

    Raises :class:`tlkit.errors.TlkitError` with the file name and a readable
    reason when the file cannot be read or decoded.
    """
    try:
        if is_url(path):
            data = _read_url(os.fspath(path))
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, tf.errors.OpError) as err:
        raise TlkitError(f"{os.fspath(path)}: cannot read file ({getattr(err, 'strerror', None) or _clean_tf_message(err)})") from None
    img, reason = _try_decode(data)
    if img is None:
        raise TlkitError(f"{os.fspath(path)}: {reason}")
    return img


def is_url(path: str | os.PathLike[str]) -> bool:
    """A path with a scheme (gs://, s3://, ram://, ...): read through ``tf.io.gfile``, not the local OS."""
    return "://" in os.fspath(path)


def _read_url(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def check_file(path: str) -> str | None:
    """``None`` if the file at ``path`` (local or a ``tf.io.gfile`` URL) is a usable image, else why not."""
    if is_url(path):
        try:
            data = _read_url(path)
        except (tf.errors.OpError, OSError) as err:
            return f"cannot read file ({_clean_tf_message(err)})"
        return check_image_bytes(data)
    return _check_file(path)


def _check_file(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        return "cannot read file (is a directory)"
    except FileNotFoundError:
        return "cannot read file (no such file; moved or deleted?)"
    except PermissionError:
        return "cannot read file (permission denied)"
    except OSError as err:
        return f"cannot read file ({err.strerror or err})"
    return check_image_bytes(data)


def scan_files(
    paths: Sequence[str | os.PathLike[str]], workers: int = 4, progress: bool = True
) -> tuple[list[str], list[tuple[str, str]]]:
    """Read and test-decode every file so that a bad one cannot stop training later.

    Returns ``(good, bad)``: good paths and ``(path, reason)`` pairs, both in
    input order. Files are checked in a thread pool (the TF decode ops release
    the GIL). A progress bar is drawn on stderr when ``progress`` is true and
    there are more than 200 files.
    """
    str_paths = [os.fspath(p) for p in paths]
    n = len(str_paths)
    reasons: list[str | None] = [None] * n
    if n == 0:
        return [], []
    _compiled_decode()  # trace once, before the threads start
    show = progress and n > _PROGRESS_MIN_FILES
    workers = max(1, int(workers))

    def run(update) -> None:
        if workers == 1:
            for i, p in enumerate(str_paths):
                reasons[i] = check_file(p)
                update(1)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tlkit-scan") as pool:
            futures = {pool.submit(check_file, p): i for i, p in enumerate(str_paths)}
            for fut in as_completed(futures):
                reasons[futures[fut]] = fut.result()
                update(1)

    if show:
        import click

        with click.progressbar(
            length=n, label=f"Checking {n} images", file=sys.stderr, show_pos=True
        ) as bar:
            run(bar.update)
    else:
        run(lambda _k: None)

    good = [p for p, r in zip(str_paths, reasons) if r is None]
    bad = [(p, r) for p, r in zip(str_paths, reasons) if r is not None]
    return good, bad
