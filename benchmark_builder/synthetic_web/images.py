"""Procedural images: a big, saturated object shape on a scene background with a texture.

Every image is a pure function of (seed, image_id): the same id always gives the same pixels
and the same bytes, so re-hosted copies can be byte-identical and a server restart changes
nothing. Shapes stay recognisable at 32 px; position, scale, rotation and noise make every
image distinct.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from benchmark_builder.synthetic_web.concepts import COLOURS, OBJECTS, SCENES, TEXTURES, weights


@dataclass(frozen=True)
class ImageParams:
    image_id: int
    year: int
    obj: int
    colour: int
    scene: int
    texture: int
    width: int
    height: int
    cx: float
    cy: float
    scale: float
    angle: float
    noise_seed: int

    @property
    def object_name(self) -> str:
        return OBJECTS[self.obj].name

    @property
    def colour_name(self) -> str:
        return COLOURS[self.colour][0]

    @property
    def scene_name(self) -> str:
        return SCENES[self.scene][0]

    @property
    def texture_name(self) -> str:
        return TEXTURES[self.texture]


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])


@functools.lru_cache(maxsize=64)
def _year_probabilities(year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The year's object, colour and scene distributions (the same arrays for every image of it)."""
    pops = np.array([o.popularity(year) for o in OBJECTS]) + 1e-9
    cw = np.array(weights([p for _, _, p in COLOURS], year))
    sw = np.array(weights([p for _, p in SCENES], year))
    return pops / pops.sum(), cw / cw.sum(), sw / sw.sum()


@functools.lru_cache(maxsize=64)
def _year_cdfs(year: int) -> tuple[np.ndarray, ...]:
    out = []
    for p in _year_probabilities(year):
        cdf = p.cumsum()
        cdf /= cdf[-1]
        out.append(cdf)
    return tuple(out)


def choose(r: np.random.Generator, cdf: np.ndarray) -> int:
    """``r.choice(len(p), p=p)`` for ``cdf`` = p's normalised cumulative sum: the same draw (one
    uniform, searched on the right) without re-checking and re-summing ``p`` every time."""
    return int(cdf.searchsorted(r.random(), side="right"))


def image_params(seed: int, image_id: int, year: int, size_kind: str = "normal") -> ImageParams:
    r = rng_for(seed, 7, image_id)
    c_obj, c_colour, c_scene = _year_cdfs(year)
    obj, colour, scene = choose(r, c_obj), choose(r, c_colour), choose(r, c_scene)
    if size_kind == "small":
        w, h = int(r.integers(90, 190)), int(r.integers(90, 190))
    elif size_kind == "wide":
        h = int(r.integers(200, 240))
        w = int(h * r.uniform(3.3, 4.5))
    else:
        w, h = int(r.integers(260, 520)), int(r.integers(240, 420))
    return ImageParams(
        image_id=image_id, year=year, obj=obj, colour=colour, scene=scene, texture=int(r.integers(len(TEXTURES))),
        width=w, height=h, cx=float(r.uniform(0.35, 0.65)), cy=float(r.uniform(0.35, 0.65)),
        scale=float(r.uniform(0.28, 0.42)), angle=float(r.uniform(0, 2 * math.pi)), noise_seed=int(r.integers(1 << 30)),
    )


_SCENE_COLOURS = {
    "sky": ((90, 160, 240), (200, 230, 255)), "grass": ((60, 140, 50), (150, 200, 90)),
    "sea": ((10, 60, 140), (40, 140, 200)), "desert": ((210, 170, 100), (250, 220, 160)),
    "night": ((5, 5, 30), (40, 40, 90)), "snow": ((220, 225, 235), (255, 255, 255)),
    "city": ((90, 90, 100), (170, 170, 180)), "studio": ((200, 200, 200), (120, 120, 120)),
}


def _background(p: ImageParams, r: np.random.Generator) -> Image.Image:
    top, bottom = (np.array(c, dtype=np.float32) for c in _SCENE_COLOURS[p.scene_name])
    t = np.linspace(0, 1, p.height, dtype=np.float32)[:, None]
    column = (top * (1 - t) + bottom * t).astype(np.uint8)[:, None, :]
    img = Image.fromarray(column, "RGB").resize((p.width, p.height), Image.NEAREST)  # every row one colour
    if p.scene_name == "sea":
        d = ImageDraw.Draw(img)
        for y in range(int(r.integers(0, 12)), p.height, 14):
            d.line([(0, y), (p.width, y + 6)], fill=(70, 150, 210), width=3)
    elif p.scene_name == "city":
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x0 = int(r.integers(0, p.width)); bw = int(r.integers(20, 60)); bh = int(r.integers(p.height // 4, p.height // 2))
            d.rectangle([x0, p.height - bh, x0 + bw, p.height], fill=(70, 70, 80))
    return img


def _polygon(p: ImageParams) -> list[list[tuple[float, float]]]:
    """The object's outline(s) in pixel coordinates."""
    name = p.object_name
    cx, cy = p.cx * p.width, p.cy * p.height
    R = p.scale * min(p.width, p.height)
    a0 = p.angle

    def reg(n, rad=R, a=a0):
        return [(cx + rad * math.cos(a + 2 * math.pi * k / n), cy + rad * math.sin(a + 2 * math.pi * k / n)) for k in range(n)]

    def rot(pts):
        c, s = math.cos(a0), math.sin(a0)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]

    if name in ("circle", "ring"):
        return [reg(48)]
    if name == "square":
        return [reg(4)]
    if name == "triangle":
        return [reg(3)]
    if name == "diamond":
        return [rot([(0, -R), (0.6 * R, 0), (0, R), (-0.6 * R, 0)])]
    if name == "hexagon":
        return [reg(6)]
    if name == "star":
        return [[pt for k in range(10) for pt in [reg(10, R if k % 2 == 0 else R * 0.42)[k]]]]
    if name == "cross":
        t = R * 0.33
        return [rot([(-t, -R), (t, -R), (t, -t), (R, -t), (R, t), (t, t), (t, R), (-t, R), (-t, t), (-R, t), (-R, -t), (-t, -t)])]
    if name == "arrow":
        return [rot([(-R, -0.25 * R), (0.2 * R, -0.25 * R), (0.2 * R, -0.6 * R), (R, 0), (0.2 * R, 0.6 * R), (0.2 * R, 0.25 * R), (-R, 0.25 * R)])]
    if name == "crescent":
        outer = reg(40)
        inner = [(x + 0.45 * R * math.cos(a0), y + 0.45 * R * math.sin(a0)) for x, y in reg(40, R * 0.85)]
        return [outer, inner]
    if name == "stripes":
        w = R * 0.22
        return [rot([(-R + i * 2 * w * 1.4, -R), (-R + i * 2 * w * 1.4 + w, -R), (-R + i * 2 * w * 1.4 + w, R), (-R + i * 2 * w * 1.4, R)]) for i in range(5)]
    if name == "heart":
        pts = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
               for t in np.linspace(0, 2 * math.pi, 60)]
        return [rot([(x * R / 17, y * R / 17) for x, y in pts])]
    if name == "bolt":
        return [rot([(-0.2 * R, -R), (0.5 * R, -R), (0.1 * R, -0.15 * R), (0.55 * R, -0.15 * R), (-0.4 * R, R), (-0.05 * R, 0.1 * R), (-0.5 * R, 0.1 * R)])]
    if name == "drone":
        arms = [rot([(-R, -0.08 * R), (R, -0.08 * R), (R, 0.08 * R), (-R, 0.08 * R)])]
        arms.append(rot([(-0.08 * R, -R), (0.08 * R, -R), (0.08 * R, R), (-0.08 * R, R)]))
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            ox, oy = sx * 0.75 * R, sy * 0.75 * R
            arms.append(rot([(ox + 0.3 * R * math.cos(t), oy + 0.3 * R * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 20)]))
        return arms
    if name == "mask":
        return [rot([(-R, -0.45 * R), (R, -0.45 * R), (0.8 * R, 0.5 * R), (0, 0.7 * R), (-0.8 * R, 0.5 * R)]),
                rot([(-R, -0.3 * R), (-1.15 * R, -0.5 * R), (-1.15 * R, 0.3 * R), (-R, 0.2 * R)]),
                rot([(R, -0.3 * R), (1.15 * R, -0.5 * R), (1.15 * R, 0.3 * R), (R, 0.2 * R)])]
    if name == "spiral":
        pts = [(cx + R * t / 12 * math.cos(t + a0), cy + R * t / 12 * math.sin(t + a0)) for t in np.linspace(0, 12, 80)]
        inner = [(cx + (R * t / 12 - R * 0.14) * math.cos(t + a0), cy + (R * t / 12 - R * 0.14) * math.sin(t + a0)) for t in np.linspace(12, 0, 80)]
        return [pts + inner]
    raise KeyError(name)


_PATTERNS: dict = {}


def _pattern(tex: str, w: int, h: int, r: np.random.Generator) -> Image.Image:
    """A 0/255 mask of the texture, from a cached tile (cheap to repeat for every image)."""
    if tex == "noise":
        small = (r.random((h // 3 + 1, w // 3 + 1)) > 0.85).astype(np.uint8) * 255
        return Image.fromarray(small, "L").resize((w, h), Image.NEAREST)
    tiled = _PATTERNS.get(tex)
    if tiled is None or tiled.width < w or tiled.height < h:
        yy, xx = np.mgrid[0:96, 0:96]
        pat = {"dots": (xx % 12 < 5) & (yy % 12 < 5), "checks": (xx // 12 + yy // 12) % 2 == 0,
               "waves": np.sin(xx / 96 * 2 * np.pi * 4 + np.sin(yy / 96 * 2 * np.pi * 2) * 2) > 0.6}[tex]
        reps = (-(-max(h, 1152) // 96), -(-max(w, 1152) // 96))
        tiled = _PATTERNS[tex] = Image.fromarray(np.tile(pat.astype(np.uint8) * 255, reps), "L")
    return tiled.crop((0, 0, w, h))  # the 96 px tile repeated from the top-left corner


def draw(p: ImageParams) -> Image.Image:
    r = rng_for(p.noise_seed, 1)
    img = _background(p, r)
    polys = _polygon(p)
    colour = COLOURS[p.colour][1]
    if p.texture_name == "plain" and p.object_name not in ("crescent", "ring"):
        # one colour, nothing cut out: the polygons go straight onto the image (the same pixels
        # as filling a 0/255 mask with them and pasting the colour under it)
        d = ImageDraw.Draw(img)
        for poly in polys:
            d.polygon(poly, fill=colour)
        return _add_noise(img, p, r)
    mask = Image.new("L", (p.width, p.height), 0)
    d = ImageDraw.Draw(mask)
    if p.object_name == "crescent":
        d.polygon(polys[0], fill=255)
        d.polygon(polys[1], fill=0)
    else:
        for poly in polys:
            d.polygon(poly, fill=255)
    if p.object_name == "ring":
        inner = [(p.cx * p.width + 0.55 * (x - p.cx * p.width), p.cy * p.height + 0.55 * (y - p.cy * p.height)) for x, y in polys[0]]
        d.polygon(inner, fill=0)
    # masks are 0/255 only, so pasting under them is exact: the object's colour, its texture's
    # shade over it, then the object over the background
    if p.texture_name != "plain":
        fg = Image.new("RGB", img.size, colour)
        fg.paste(tuple(int(c * 0.7) for c in colour), (0, 0, p.width, p.height), _pattern(p.texture_name, p.width, p.height, r))
        img.paste(fg, (0, 0), mask)
    else:
        img.paste(colour, (0, 0, p.width, p.height), mask)
    return _add_noise(img, p, r)


def _add_noise(img: Image.Image, p: ImageParams, r: np.random.Generator) -> Image.Image:
    noise = r.integers(120, 137, size=(p.height // 4 + 1, p.width // 4 + 1), dtype=np.uint8)
    noise = Image.fromarray(noise, "L").resize((p.width, p.height), Image.NEAREST)
    return ImageChops.add(img, Image.merge("RGB", (noise, noise, noise)), scale=1.0, offset=-128)


def encode(img: Image.Image, fmt: str = "jpeg", quality: int = 90, scale: float = 1.0, mode: str | None = None) -> bytes:
    if scale != 1.0:
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.BILINEAR)
    if mode == "RGBA":
        a = Image.new("L", img.size, 255)
        ImageDraw.Draw(a).rectangle([0, 0, img.width // 5, img.height // 5], fill=0)
        img = img.convert("RGBA")
        img.putalpha(a)
    elif mode == "L":
        img = img.convert("L")
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=0)
    elif fmt == "gif":
        img.convert("P", palette=Image.ADAPTIVE).save(buf, "GIF")
    else:
        raise ValueError(fmt)
    return buf.getvalue()
