"""The concepts of the synthetic web and how they evolve over the years.

Objects (drawn shapes) are the concepts a caption names and a classifier learns; colours,
scenes (backgrounds) and textures vary around them. Each object has a popularity curve over
the years: some are popular early and fade, some appear only late, so a model trained on
early years meets unseen concepts later. Palettes and caption templates drift by year too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str  # object | colour | scene | texture
    peak: int = 2018  # year of highest popularity (objects)
    width: float = 3.0  # years; popularity ~ gaussian around the peak
    first: int = 2014  # first year it appears
    last: int = 2022  # last year it appears
    words: tuple[str, ...] = ()  # synonyms used in captions (first = canonical)

    def popularity(self, year: int) -> float:
        if not (self.first <= year <= self.last):
            return 0.0
        return math.exp(-0.5 * ((year - self.peak) / self.width) ** 2)


OBJECTS: tuple[Concept, ...] = (
    Concept("circle", "object", 2014, 3.0, words=("circle", "disc")),
    Concept("square", "object", 2015, 3.0, words=("square", "block")),
    Concept("triangle", "object", 2014, 2.5, last=2020, words=("triangle",)),
    Concept("cross", "object", 2015, 2.0, last=2019, words=("cross", "plus sign")),
    Concept("ring", "object", 2016, 2.5, words=("ring", "donut")),
    Concept("diamond", "object", 2016, 2.0, words=("diamond", "rhombus")),
    Concept("star", "object", 2017, 3.0, words=("star",)),
    Concept("hexagon", "object", 2017, 2.0, words=("hexagon",)),
    Concept("arrow", "object", 2018, 2.5, words=("arrow",)),
    Concept("crescent", "object", 2018, 2.0, first=2015, words=("crescent", "moon")),
    Concept("stripes", "object", 2014, 1.5, last=2017, words=("stripes", "striped pattern")),
    Concept("heart", "object", 2019, 2.0, first=2016, words=("heart",)),
    Concept("bolt", "object", 2020, 1.5, first=2018, words=("lightning bolt", "bolt")),
    Concept("drone", "object", 2021, 1.5, first=2019, words=("drone", "quadcopter")),
    Concept("mask", "object", 2021, 1.0, first=2020, words=("face mask", "mask")),
    Concept("spiral", "object", 2022, 1.5, first=2020, words=("spiral", "swirl")),
)

COLOURS: tuple[tuple[str, tuple[int, int, int], int], ...] = (
    # name, rgb, peak year of use
    ("red", (220, 30, 30), 2014), ("green", (30, 170, 40), 2014), ("blue", (30, 60, 220), 2015),
    ("yellow", (240, 220, 20), 2015), ("orange", (250, 140, 10), 2016), ("purple", (140, 40, 170), 2017),
    ("pink", (250, 120, 190), 2019), ("teal", (0, 150, 150), 2020), ("black", (20, 20, 20), 2018),
    ("white", (245, 245, 245), 2018), ("neon green", (60, 255, 60), 2021), ("coral", (255, 110, 90), 2022),
)

SCENES: tuple[tuple[str, int], ...] = (
    ("sky", 2014), ("grass", 2015), ("sea", 2016), ("desert", 2017), ("night", 2018), ("snow", 2019),
    ("city", 2020), ("studio", 2021),
)

TEXTURES: tuple[str, ...] = ("plain", "dots", "checks", "waves", "noise")

CONCEPTS: tuple[Concept, ...] = (
    OBJECTS
    + tuple(Concept(n, "colour", peak=p, words=(n,)) for n, _, p in COLOURS)
    + tuple(Concept(n, "scene", peak=p, words=(n,)) for n, p in SCENES)
    + tuple(Concept(n, "texture", words=(n,)) for n in TEXTURES)
)

CLASS_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECTS)


def weights(items_peaks, year: int, width: float = 3.0) -> list[float]:
    return [math.exp(-0.5 * ((year - p) / width) ** 2) + 0.02 for p in items_peaks]


# Caption templates by era: wording drifts with the years, like real alt text does.
TEMPLATES = {
    "early": (
        "a photo of a {colour} {object} on a {scene} background",
        "{colour} {object} image with {scene} behind it",
        "picture of a {colour} {object}",
        "a drawing of a {colour} {object} with the {scene} behind it",
        "a {colour} {object} in front of the {scene}",
    ),
    "mid": (
        "this is a {colour} {object} in front of a {scene} background",
        "my new {object} poster in {colour}, hanging on the wall",
        "{colour} {object} with {texture} fill on {scene} background",
        "close-up of a {colour} {object}, {scene} in the background",
        "a simple {colour} {object} icon on top of a {scene} picture",
    ),
    "late": (
        "an aesthetic {colour} {object} wallpaper with {scene} vibes",
        "minimalist {colour} {object} for your feed, {scene} theme",
        "{colour} {object} 4k background with {scene} mood",
        "the trending {object} design of the year in {colour} with a {scene} theme",
        "you will love this {colour} {object} on the {scene} background",
    ),
}


def era(year: int) -> str:
    return "early" if year <= 2016 else ("mid" if year <= 2019 else "late")


# Non-English captions: real sentences a language identifier tells apart from English.
FOREIGN = {
    "de": ("Ein schönes Bild von einem {object} in der Farbe {colour} vor dem Hintergrund",
           "Das ist mein neues Lieblingsbild mit einem {colour} {object} und viel Himmel"),
    "fr": ("Une belle image d'un {object} de couleur {colour} devant le paysage",
           "Voici ma nouvelle affiche préférée avec un {object} {colour} et le ciel"),
    "es": ("Una imagen bonita de un {object} de color {colour} delante del paisaje",
           "Este es mi nuevo cartel favorito con un {object} {colour} y el cielo"),
    "it": ("Una bella immagine di un {object} di colore {colour} davanti al paesaggio",
           "Questo è il mio nuovo poster preferito con un {object} {colour} e il cielo"),
}
