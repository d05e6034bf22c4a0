"""Decode, resize and re-encode downloaded images; hash them on the way.

Semantics follow img2dataset's ``Resizer`` (modes ``no``, ``keep_ratio``, ``keep_ratio_largest``,
``center_crop``, ``border``; alpha composited on white; ``min_image_size``, ``max_image_area``,
``max_aspect_ratio`` guards), the implementation is Pillow with JPEG draft mode: libjpeg decodes
at 1/2, 1/4 or 1/8 scale whenever the result is still at least the target size, which is most
of the cost of a large photo. Pillow releases the GIL while decoding, resizing and encoding, so
a thread pool uses every core.

``phash`` is the 256-bit DCT perceptual hash of ``imagehash.phash(img, hash_size=16)`` (64x64
grey, DCT, top-left 16x16, median threshold), as 64 hex characters: on the embedded web a
re-encoded or resized copy stays within 16 bits of its original while distinct images are 44+
bits apart, a margin the 64-bit hash does not have; ``sha256`` is of the downloaded bytes.
"""
from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.fft import dct

# Pillow's process-wide decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is left as it is:
# ``max_image_area`` is checked for every image from its header, before any pixel is decoded
# (``image_too_large``), and only the formats of ``ALLOWED_FORMATS`` are opened
# (``unsupported_format:<fmt>`` for another image format, ``not_an_image:text/html`` for a web page).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ADDRESS = re.compile(r" (object )?at 0x[0-9a-fA-F]+")
MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")


@dataclass(frozen=True)
class ResizeConfig:
    image_size: int = 256
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = False
    encode_quality: int = 95
    min_image_size: int = 0
    max_image_area: float = 40e6  # pixels; larger images are refused before decoding
    max_aspect_ratio: float = float("inf")

    def __post_init__(self):
        if self.resize_mode not in MODES:
            raise ValueError(f"resize_mode must be one of {MODES}, got {self.resize_mode!r}")


@dataclass
class Resized:
    jpg: bytes | None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None
    phash: str | None = None
    reason: str | None = None
    error_message: str | None = None


PHASH_SIZE = 16  # bits = PHASH_SIZE ** 2


def phash(img: Image.Image, hash_size: int = PHASH_SIZE) -> str:
    """``str(imagehash.phash(img, hash_size))`` (highfreq_factor 4), bit for bit, as hex."""
    n = hash_size * 4
    small = np.asarray(img.convert("L").resize((n, n), Image.LANCZOS), dtype=np.float64)
    coeffs = dct(dct(small, axis=0, norm=None), axis=1, norm=None)[:hash_size, :hash_size]
    bits = (coeffs > np.median(coeffs)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{hash_size * hash_size // 4}x}"


def _target(ow: int, oh: int, cfg: ResizeConfig) -> tuple[int, int] | None:
    """Size to resize to before cropping/padding, or None to keep the original size."""
    s = cfg.image_size
    if cfg.resize_mode == "no":
        return None
    if cfg.resize_mode in ("keep_ratio", "center_crop"):
        short = min(ow, oh)
        if cfg.resize_only_if_bigger and short <= s:
            return None
        f = s / short
    else:  # keep_ratio_largest, border
        long = max(ow, oh)
        if cfg.resize_only_if_bigger and long <= s:
            return None
        f = s / long
    return max(1, round(ow * f)), max(1, round(oh * f))


def _flatten(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB") if img.mode != "RGB" else img


def _not_allowed(body: bytes) -> tuple[str, str]:
    """(reason, message) for bytes no allowed format opens."""
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<meta", b"<script", b"<title")):
        return "not_an_image:text/html", "an HTML page"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in body[:4096].lower()):
        return "unsupported_format:svg", "SVG"
    try:  # name the format (header only; no pixels are decoded)
        with Image.open(io.BytesIO(body)) as other:
            return f"unsupported_format:{(other.format or 'unknown').lower()}", f"{other.format} {other.size}"
    except Exception:
        return "decode_error", "cannot identify image file"


def resize_image(body: bytes, cfg: ResizeConfig = ResizeConfig()) -> Resized:
    sha = hashlib.sha256(body).hexdigest()
    try:
        try:
            img = Image.open(io.BytesIO(body), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            reason, message = _not_allowed(body)
            return Resized(None, sha256=sha, reason=reason, error_message=message)
        ow, oh = img.size
        if ow * oh > cfg.max_image_area:
            return Resized(None, original_width=ow, original_height=oh, sha256=sha, reason="image_too_large",
                           error_message=f"{ow}x{oh} pixels")
        if min(ow, oh) < cfg.min_image_size:
            return Resized(None, original_width=ow, original_height=oh, sha256=sha, reason="image_too_small")
        if max(ow, oh) / max(1, min(ow, oh)) > cfg.max_aspect_ratio:
            return Resized(None, original_width=ow, original_height=oh, sha256=sha, reason="aspect_ratio_too_large")
        target = _target(ow, oh, cfg)
        if target is not None and img.format == "JPEG":
            img.draft("RGB", target)  # libjpeg DCT scaling: never below the target size
        img = ImageOps.exif_transpose(img) if img.format == "JPEG" and img.getexif() else img
        img = _flatten(img)
        if target is not None and img.size != target:
            img = img.resize(target, Image.BICUBIC, reducing_gap=2.0 if target[0] < img.width else None)
        s = cfg.image_size
        if cfg.resize_mode == "center_crop" and target is not None:
            left, top = (img.width - s) // 2, (img.height - s) // 2
            img = img.crop((left, top, left + s, top + s))
        elif cfg.resize_mode == "border" and target is not None:
            canvas = Image.new("RGB", (max(s, img.width), max(s, img.height)), (255, 255, 255))
            canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
            img = canvas
        h = phash(img)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=cfg.encode_quality)
        return Resized(out.getvalue(), img.width, img.height, ow, oh, sha, h)
    except Image.DecompressionBombError as e:
        return Resized(None, sha256=sha, reason="image_too_large", error_message=str(e)[:200])
    except Exception as e:  # truncated, corrupt, unsupported: the image is unusable, the job goes on
        message = _ADDRESS.sub("", f"{type(e).__name__}: {e}")  # no memory addresses: status rows must be reproducible
        return Resized(None, sha256=sha, reason="decode_error", error_message=message[:300])
