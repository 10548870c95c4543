"""Synthetic long-tail world: hundreds of object concepts whose frequencies follow a Zipf law.

The toy world (:mod:`openalign.corpus.synth`) has 64 colour+shape combinations, so a thousand pairs
cover it and more data only repeats it. Web alt-text is not like that: a few concepts are everywhere
and most are rare, so every new batch of pairs still brings concepts never seen before. This world
draws its objects, their colours and the relations between two objects from Zipf laws
(p(rank r) ~ 1 / r^s), over a catalogue of distinguishable procedural glyphs, each named by an
invented word ("a red blicket left of a teal dax"): nothing but the pairs can teach those names.

Each concept is a glyph: an outline (16 kinds) x an aspect (round, wide, tall) x an inner mark
(8 kinds: plain, hole, stripes three ways, dots, a diagonal cross, an inner ring), 384 in all. The
catalogue's order and names depend only on a fixed seed, not on the corpus seed, so corpora share
concepts. The rank of a concept is its position in that order.

Training captions are noisy as in the toy world (swapped, junk, one attribute wrong). The held-out
split samples concepts uniformly within three frequency strata (head: the most frequent concepts
holding half the probability mass, torso: the next 30%, tail: the last 20%), in equal numbers, so
it measures the tail; its scenes vary only in their two concepts (same colour, size, relation), so
R@K measures the concepts, not colours; ``karpathy.json`` has them all as split "test" and ``karpathy_strata.json``
the same images with split = stratum (``openalign eval retrieval --split tail``). A zero-shot split
(``zeroshot/``, one ImageFolder class per concept) and ``stats.json`` (every concept's training
frequency, and the number of distinct concepts seen as a function of the number of pairs) go with it.

Deterministic per seed: every sample draws from its own RNG keyed by (seed, split, index, stream).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from openalign.corpus.synth import (
    NOISE_KINDS,
    PREFIXES,
    SUFFIXES,
    CorpusInfo,
    encode_jpeg,
    junk_caption,
    noise_plan,
    run_shard_jobs,
    shard_pattern,
    write_sample_shard,
)
from openalign.io import atomic_write_text, atomic_write_with

CATALOGUE_SEED = 4321  # fixes the concepts' order and names for every corpus seed
OUTLINES: tuple[str, ...] = ("triangle", "square", "pentagon", "hexagon", "heart", "star4", "star5", "star6",
                             "star8", "circle", "semicircle", "trapezoid", "arrow", "plus", "ell", "tee")
ASPECTS: dict[str, tuple[float, float]] = {"round": (1.0, 1.0), "wide": (1.0, 0.6), "tall": (0.6, 1.0)}
MARKS: tuple[str, ...] = ("plain", "hole", "hstripes", "vstripes", "dstripes", "dots", "xcross", "ring")
MAX_CONCEPTS = len(OUTLINES) * len(ASPECTS) * len(MARKS)

# Colours in a plausible order of how often alt-text names them: the Zipf law runs down this list.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 70, 225), "green": (30, 160, 50), "black": (15, 15, 15),
    "white": (248, 248, 248), "yellow": (245, 215, 25), "orange": (250, 135, 15), "pink": (250, 140, 190),
    "purple": (135, 45, 180), "brown": (120, 70, 30), "cyan": (40, 215, 230), "navy": (15, 25, 100),
    "lime": (160, 240, 40), "magenta": (230, 30, 200), "teal": (0, 120, 120), "maroon": (110, 10, 30),
    "gold": (215, 165, 30), "olive": (110, 115, 20), "turquoise": (60, 225, 190), "indigo": (75, 20, 140),
    "salmon": (250, 130, 110), "lavender": (195, 165, 245), "crimson": (180, 0, 50), "mint": (170, 250, 190),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
RELATIONS: tuple[str, ...] = ("left of", "above", "right of", "below", "next to")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above", "next to": "next to"}
RELATION_WORDS = {
    "left of": ["left of", "to the left of", "on the left of"], "right of": ["right of", "to the right of"],
    "above": ["above", "over", "on top of"], "below": ["below", "under", "beneath"],
    "next to": ["next to", "beside", "by"],
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"grey": (128, 128, 128), "beige": (165, 150, 120),
                                                "slate": (95, 105, 120)}
STRATA: tuple[str, ...] = ("head", "torso", "tail")
STRATUM_MASS = (0.5, 0.8)  # cumulative probability mass where head and torso end
P_PAIR = 0.45  # training images showing two objects and a relation (the rest show one)
SS = 2  # supersampling factor for anti-aliased edges

Attrs = dict[str, Any]  # {"objects": [{"concept", "rank", "colour", "size"}], "relation", "background"}


# --------------------------------------------------------------------------------------------
# the concept catalogue and the Zipf laws


@dataclass(frozen=True)
class Concept:
    name: str
    rank: int  # 1 = the most frequent
    outline: str
    aspect: str
    mark: str


def _names(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct pronounceable invented words (the concepts' names, unknown to any vocabulary)."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "bl", "br", "dr", "fl",
              "gr", "kr", "pl", "sk", "sn", "st", "tr"]
    vowels, codas = ["a", "e", "i", "o", "u"], ["", "", "k", "n", "p", "t", "x", "m", "sh"]
    taken = set(PALETTE) | set(BACKGROUNDS) | {w for ws in RELATION_WORDS.values() for p in ws for w in p.split()}
    out: list[str] = []
    while len(out) < n:
        w = rng.choice(onsets) + rng.choice(vowels) + rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@cache
def catalogue(num_concepts: int = MAX_CONCEPTS) -> tuple[Concept, ...]:
    """The ``num_concepts`` most frequent concepts, by rank; a prefix of the full catalogue."""
    if not 3 <= num_concepts <= MAX_CONCEPTS:  # at least one concept per stratum
        raise ValueError(f"num_concepts must be in [3, {MAX_CONCEPTS}], got {num_concepts}")
    rng = random.Random(CATALOGUE_SEED)
    glyphs = list(itertools.product(OUTLINES, ASPECTS, MARKS))
    rng.shuffle(glyphs)  # so head concepts are not all triangles
    names = _names(MAX_CONCEPTS, rng)
    return tuple(Concept(names[i], i + 1, *glyphs[i]) for i in range(num_concepts))


def zipf_probs(n: int, s: float) -> list[float]:
    """p(rank r) = r^-s / sum_k k^-s for r = 1..n."""
    if not s >= 0.0 or not math.isfinite(s):
        raise ValueError(f"zipf_s must be a finite number >= 0, got {s}")
    w = [r ** -s for r in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


@cache
def _cum(n: int, s: float) -> tuple[float, ...]:
    return tuple(itertools.accumulate(zipf_probs(n, s)))


def zipf_draw(rng: random.Random, n: int, s: float) -> int:
    """A 0-based rank index drawn from the Zipf law over ``n`` ranks."""
    cum = _cum(n, s)
    return min(n - 1, bisect.bisect_right(cum, rng.random() * cum[-1]))


def strata(num_concepts: int, s: float) -> list[str]:
    """Per rank: "head" until half the probability mass, "torso" until 80%, then "tail" (never empty)."""
    out, mass = [], 0.0
    for p in zipf_probs(num_concepts, s):
        out.append("head" if mass < STRATUM_MASS[0] else "torso" if mass < STRATUM_MASS[1] else "tail")
        mass += p
    if len(set(out)) < len(STRATA):  # a flat law (s ~ 0) or a tiny catalogue: thirds by rank instead
        out = [STRATA[3 * i // len(out)] for i in range(len(out))]
    return out


# --------------------------------------------------------------------------------------------
# sampling a scene


def _object(rng: random.Random, rank_index: int, num_concepts: int, colour: str) -> dict:
    c = catalogue(num_concepts)[rank_index]
    return {"concept": c.name, "rank": c.rank, "colour": colour, "size": rng.choice(SIZES)}


def sample_attrs(rng: random.Random, num_concepts: int, s: float, pool: list[int] | None = None,
                 pair: bool | None = None) -> Attrs:
    """A scene: one object, or two with a relation. Concepts, colours and relations follow Zipf laws;
    with ``pool`` (rank indices) concepts are drawn uniformly from it and colours uniformly instead."""
    pair = rng.random() < P_PAIR if pair is None else pair

    def draw() -> dict:
        if pool is None:
            return _object(rng, zipf_draw(rng, num_concepts, s), num_concepts,
                           COLOURS[zipf_draw(rng, len(COLOURS), s)])
        return _object(rng, rng.choice(pool), num_concepts, rng.choice(COLOURS))

    objects = [draw()]
    while pair and len(objects) < 2:
        o = draw()
        if o["concept"] != objects[0]["concept"] or (pool is not None and len(pool) < 2) or rng.random() < 0.02:
            objects.append(o)  # two of one concept are rare (and the only option in a one-concept pool)
    relation = RELATIONS[zipf_draw(rng, len(RELATIONS), s)] if pair else None
    return {"objects": objects, "relation": relation, "background": rng.choice(tuple(BACKGROUNDS))}


# --------------------------------------------------------------------------------------------
# rendering


def _outline(name: str) -> list[tuple[float, float]]:
    """Unit outline (within [-1, 1]^2, y down) of one of OUTLINES."""
    def regular(k: int, r_in: float | None = None) -> list[tuple[float, float]]:
        """A k-gon pointing up, or a k-pointed star whose inner vertices sit at radius ``r_in``."""
        radii = [1.0, r_in] * k if r_in else [1.0] * k
        step = 2 * math.pi / len(radii)
        return [(r * math.cos(-math.pi / 2 + j * step), r * math.sin(-math.pi / 2 + j * step))
                for j, r in enumerate(radii)]

    fixed = {
        "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
        "semicircle": [(math.cos(t), 0.45 - math.sin(t)) for t in (math.pi * j / 24 for j in range(25))],
        "trapezoid": [(-0.5, -0.75), (0.5, -0.75), (1.0, 0.75), (-1.0, 0.75)],
        "arrow": [(0, -1), (0.9, -0.1), (0.35, -0.1), (0.35, 1), (-0.35, 1), (-0.35, -0.1), (-0.9, -0.1)],
        "plus": [(-0.32, -1), (0.32, -1), (0.32, -0.32), (1, -0.32), (1, 0.32), (0.32, 0.32), (0.32, 1),
                 (-0.32, 1), (-0.32, 0.32), (-1, 0.32), (-1, -0.32), (-0.32, -0.32)],
        "ell": [(-0.8, -1), (-0.15, -1), (-0.15, 0.35), (0.8, 0.35), (0.8, 1), (-0.8, 1)],
        "tee": [(-1, -1), (1, -1), (1, -0.35), (0.32, -0.35), (0.32, 1), (-0.32, 1), (-0.32, -0.35), (-1, -0.35)],
    }
    if name in fixed:
        return fixed[name]
    if name == "circle":
        return regular(40)
    if name == "heart":
        ts = [2 * math.pi * k / 40 for k in range(40)]
        return [(math.sin(t) ** 3,
                 -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 16 - 0.1)
                for t in ts]
    if name.startswith("star"):
        return regular(int(name[4:]), r_in=0.45)
    return regular({"triangle": 3, "pentagon": 5, "hexagon": 6}[name])


HOLE_AT = {"ell": (-0.48, 0.67)}  # a point deep inside outlines whose centre is off their body


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (25, 25, 25) if luma > 135 else (235, 235, 235)


def _draw_mark(draw: ImageDraw.ImageDraw, mark: str, size: int, colour: tuple[int, int, int], ring: list) -> None:
    """The concept's inner mark on its object layer (the outline mask clips it)."""
    w, step = max(SS, size // 11), max(3, size // 5)
    if mark in ("hstripes", "vstripes", "dstripes"):
        for k in range(-size, 2 * size, step):
            line = {"hstripes": [(0, k), (size, k)], "vstripes": [(k, 0), (k, size)],
                    "dstripes": [(k, 0), (k - size, size)]}[mark]
            draw.line(line, fill=colour, width=w)
    elif mark == "dots":
        r = max(SS, size // 14)
        for x in (0.3, 0.5, 0.7):
            for y in (0.3, 0.5, 0.7):
                draw.ellipse([x * size - r, y * size - r, x * size + r, y * size + r], fill=colour)
    elif mark == "xcross":
        draw.line([(0.2 * size, 0.2 * size), (0.8 * size, 0.8 * size)], fill=colour, width=w)
        draw.line([(0.8 * size, 0.2 * size), (0.2 * size, 0.8 * size)], fill=colour, width=w)
    elif mark == "ring":
        draw.line(ring + ring[:1], fill=colour, width=w)


def draw_object(img: Image.Image, concept: Concept, rgb: tuple[int, int, int], cx: float, cy: float,
                diam: float, rng: random.Random) -> None:
    """Paste one glyph (outline x aspect, mark, fill colour) centred at (cx, cy) onto ``img``."""
    size = max(8, int(diam))
    sx, sy = ASPECTS[concept.aspect]
    rot = rng.uniform(-0.15, 0.15)
    cr, sr = math.cos(rot), math.sin(rot)

    def place(pts: list[tuple[float, float]], scale: float) -> list[tuple[float, float]]:
        half = size / 2 * 0.96 * scale
        return [(size / 2 + half * (x * sx * cr - y * sy * sr), size / 2 + half * (x * sx * sr + y * sy * cr))
                for x, y in pts]

    unit = _outline(concept.outline)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(place(unit, 1.0), fill=255)
    if concept.mark == "hole":  # the background shows through a round hole inside the body
        hx, hy = HOLE_AT.get(concept.outline, (0.0, 0.0))
        ImageDraw.Draw(mask).polygon(place([(hx + 0.28 * x, hy + 0.28 * y) for x, y in _outline("circle")], 1.0),
                                     fill=0)
    fill = tuple(int(min(255, max(0, v + rng.randint(-10, 10)))) for v in rgb)
    layer = Image.new("RGB", (size, size), fill)
    draw = ImageDraw.Draw(layer)
    _draw_mark(draw, concept.mark, size, _contrast(rgb), place(unit, 0.55))
    draw.polygon(place(unit, 1.0), outline=tuple(int(v * 0.55) for v in fill), width=SS)  # edge against the bg
    img.paste(layer, (int(cx - size / 2), int(cy - size / 2)), mask)


def _centres(attrs: Attrs, big: int, rng: random.Random) -> list[tuple[float, float]]:
    def jitter(v: float, amount: float) -> float:
        return (v + rng.uniform(-amount, amount)) * big

    if attrs["relation"] is None:
        return [(jitter(0.5, 0.08), jitter(0.5, 0.08))]
    rel = attrs["relation"]
    if rel == "next to":
        rel = rng.choice(("left of", "right of"))
    a, b = {"left of": ((0.27, 0.5), (0.73, 0.5)), "right of": ((0.73, 0.5), (0.27, 0.5)),
            "above": ((0.5, 0.27), (0.5, 0.73)), "below": ((0.5, 0.73), (0.5, 0.27))}[rel]
    return [(jitter(a[0], 0.03), jitter(a[1], 0.03)), (jitter(b[0], 0.03), jitter(b[1], 0.03))]


def render(attrs: Attrs, image_size: int, rng: random.Random) -> Image.Image:
    """Draw one scene (RGB, ``image_size`` square)."""
    big = image_size * SS
    base = BACKGROUNDS[attrs["background"]]
    img = Image.new("RGB", (big, big), tuple(v + rng.randint(-8, 8) for v in base))
    by_rank = catalogue(MAX_CONCEPTS)
    pair = attrs["relation"] is not None
    for obj, (cx, cy) in zip(attrs["objects"], _centres(attrs, big, rng)):
        frac = ({"small": 0.30, "large": 0.42} if pair else {"small": 0.40, "large": 0.62})[obj["size"]]
        draw_object(img, by_rank[obj["rank"] - 1], PALETTE[obj["colour"]], cx, cy, frac * big, rng)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


# --------------------------------------------------------------------------------------------
# captions


def _noun(obj: dict, rng: random.Random, p_size: float) -> str:
    size = rng.choice(SIZE_WORDS[obj["size"]]) + " " if rng.random() < p_size else ""
    if rng.random() < 0.15:  # "a blicket in red"
        return f"{_article(size or obj['concept'], rng)} {size}{obj['concept']} in {obj['colour']}"
    return f"{_article(size or obj['colour'], rng)} {size}{obj['colour']} {obj['concept']}"


def _article(next_word: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "one"
    return "an" if next_word[:1] in "aeiou" else "a"


def make_caption(attrs: Attrs, rng: random.Random, p_size: float = 0.3, p_filler: float = 0.5) -> str:
    """A web-like caption naming every object's colour and concept, and the relation between two."""
    first = _noun(attrs["objects"][0], rng, p_size)
    if attrs["relation"] is None:
        core = first
        if rng.random() < 0.25:
            core += rng.choice([" on a {} background", " on {}", " against a {} backdrop"]).format(attrs["background"])
    else:
        second = _noun(attrs["objects"][1], rng, p_size)
        if rng.random() < 0.5:
            core = f"{first} {rng.choice(RELATION_WORDS[attrs['relation']])} {second}"
        else:  # the same scene said from the other object
            core = f"{second} {rng.choice(RELATION_WORDS[INVERSE[attrs['relation']]])} {first}"
    if rng.random() < p_filler:
        core = " ".join(w for w in (rng.choice(PREFIXES), core, rng.choice(SUFFIXES)) if w)
    r = rng.random()
    return core.title() if r < 0.1 else core[:1].upper() + core[1:] if r < 0.5 else core


def wrong_attrs(attrs: Attrs, rng: random.Random, num_concepts: int, s: float) -> tuple[Attrs, str]:
    """One thing wrong: an object's concept, an object's colour, or the relation."""
    options = ["concept", "concept", "colour"] + (["relation"] if attrs["relation"] else [])
    name = rng.choice(options)
    out = json.loads(json.dumps(attrs))  # deep copy of plain data
    obj = out["objects"][rng.randrange(len(out["objects"]))]
    if name == "relation":
        out["relation"] = rng.choice([r for r in RELATIONS if r != attrs["relation"]])
    elif name == "colour":
        obj["colour"] = rng.choice([c for c in COLOURS if c != obj["colour"]])
    else:
        rank_index = obj["rank"] - 1
        while rank_index == obj["rank"] - 1:
            rank_index = zipf_draw(rng, num_concepts, s)
        obj.update({k: v for k, v in _object(rng, rank_index, num_concepts, obj["colour"]).items() if k != "size"})
    return out, name


# --------------------------------------------------------------------------------------------
# training samples


def _rng(seed: int, split: str, index: int, stream: str) -> random.Random:
    # string seeds are hashed with sha512: stable across processes and Python runs
    return random.Random(f"openalign-longtail:{seed}:{split}:{index}:{stream}")


def train_attrs(seed: int, index: int, num_concepts: int, s: float) -> Attrs:
    return sample_attrs(_rng(seed, "train", index, "attrs"), num_concepts, s)


def train_sample(index: int, seed: int, noise: str, num_train: int, image_size: int, num_concepts: int,
                 s: float) -> dict:
    """One training sample: JPEG bytes, caption and metadata; ``noise`` is "none" or a NOISE_KINDS entry."""
    attrs = train_attrs(seed, index, num_concepts, s)
    rng = _rng(seed, "train", index, "caption")
    image = encode_jpeg(render(attrs, image_size, _rng(seed, "train", index, "render")))
    clean = make_caption(attrs, rng)
    meta: dict = {"attributes": attrs, "clean_caption": clean, "noisy": noise != "none", "noise": noise}
    if noise == "none":
        caption = clean
    elif noise == "junk":
        caption = junk_caption(rng)
    elif noise == "swap":
        other = _unrelated(index, seed, num_train, attrs, num_concepts, s, rng)
        other_attrs = train_attrs(seed, other, num_concepts, s)
        caption = make_caption(other_attrs, _rng(seed, "train", other, "caption"))  # its own clean caption
        meta["swapped_with"], meta["caption_attributes"] = other, other_attrs
    elif noise == "wrong_attr":
        bad, name = wrong_attrs(attrs, rng, num_concepts, s)
        caption, meta["wrong_attribute"], meta["caption_attributes"] = make_caption(bad, rng), name, bad
    else:
        raise ValueError(f"unknown noise kind {noise!r}")
    return {"image": image, "caption": caption, "meta": meta}


def _unrelated(index: int, seed: int, num_train: int, attrs: Attrs, num_concepts: int, s: float,
               rng: random.Random) -> int:
    """Another training image whose first object is another concept (a head concept dominates at high s)."""
    other = index
    for _ in range(100):
        other = rng.randrange(num_train)
        if train_attrs(seed, other, num_concepts, s)["objects"][0]["concept"] != attrs["objects"][0]["concept"]:
            break
    return other


@dataclass(frozen=True)
class _ShardJob:
    path: str
    start: int
    noise: tuple[str, ...]  # one entry per sample of this shard
    seed: int
    num_train: int
    image_size: int
    num_concepts: int
    zipf_s: float


def _write_shard(job: _ShardJob) -> int:
    return write_sample_shard(job.path, job.start, job.image_size, (
        train_sample(job.start + k, job.seed, noise, job.num_train, job.image_size, job.num_concepts, job.zipf_s)
        for k, noise in enumerate(job.noise)))


# --------------------------------------------------------------------------------------------
# statistics: frequencies and how many distinct concepts N pairs bring


def checkpoints(n: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``n``, and ``n``."""
    out = [m * 10 ** e for e in range(len(str(n))) for m in (1, 2, 5) if m * 10 ** e < n]
    return out + [n]


def concept_curve(attrs_list: list[Attrs]) -> list[dict[str, int]]:
    """Distinct objects, colours, relations and (object, colour) pairs shown in the first N images."""
    seen: dict[str, set] = {"objects": set(), "colours": set(), "relations": set(), "object_colour": set()}
    marks, out = set(checkpoints(len(attrs_list))), []
    for n, attrs in enumerate(attrs_list, start=1):
        for o in attrs["objects"]:
            seen["objects"].add(o["concept"])
            seen["colours"].add(o["colour"])
            seen["object_colour"].add((o["concept"], o["colour"]))
        if attrs["relation"]:
            seen["relations"].add(attrs["relation"])
        if n in marks:
            out.append({"pairs": n, **{k: len(v) for k, v in seen.items()}})
    return out


def _counts(attrs_list: list[Attrs], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for attrs in attrs_list:
        if key == "relation":
            values = [attrs["relation"]] if attrs["relation"] else []
        else:
            values = {o[key] for o in attrs["objects"]}  # images showing it, not objects
        for v in values:
            counts[v] = counts.get(v, 0) + 1
    return counts


def corpus_stats(attrs_list: list[Attrs], num_concepts: int, s: float) -> dict[str, Any]:
    probs, bands = zipf_probs(num_concepts, s), strata(num_concepts, s)
    freq = _counts(attrs_list, "concept")
    concepts = [{"name": c.name, "rank": c.rank, "stratum": bands[c.rank - 1], "probability": probs[c.rank - 1],
                 "train_images": freq.get(c.name, 0), "outline": c.outline, "aspect": c.aspect, "mark": c.mark}
                for c in catalogue(num_concepts)]
    per_stratum = {b: {"concepts": bands.count(b), "ranks": [bands.index(b) + 1, len(bands) - bands[::-1].index(b)],
                       "probability_mass": sum(p for p, x in zip(probs, bands) if x == b),
                       "seen_in_train": sum(1 for c in concepts if c["stratum"] == b and c["train_images"])}
                   for b in STRATA}
    colours, relations = _counts(attrs_list, "colour"), _counts(attrs_list, "relation")
    return {"concepts": concepts, "strata": per_stratum, "distinct_vs_pairs": concept_curve(attrs_list),
            "colours": {c: colours.get(c, 0) for c in COLOURS},
            "relations": {r: relations.get(r, 0) for r in RELATIONS}}


# --------------------------------------------------------------------------------------------
# held-out retrieval split and zero-shot split


# Held-out scenes differ only in their concepts: with free colours two random colours out of 24 tell
# most images of a 100-image gallery apart, and a model blind to every concept scored 40% R@1.
HELDOUT_LOOK = {"colour": "red", "size": "large", "relation": "above"}  # "above" survives horizontal flips


def heldout_attrs(index: int, seed: int, num_concepts: int, s: float) -> tuple[str, Attrs]:
    """The ``index``-th held-out scene: strata in turn, two concepts drawn uniformly from that stratum,
    both red and large, one above the other."""
    bands = strata(num_concepts, s)
    stratum = STRATA[index % len(STRATA)]
    pool = [i for i, b in enumerate(bands) if b == stratum]
    attrs = sample_attrs(_rng(seed, "heldout", index, "attrs"), num_concepts, s, pool=pool, pair=True)
    for o in attrs["objects"]:
        o.update(colour=HELDOUT_LOOK["colour"], size=HELDOUT_LOOK["size"])
    return stratum, {**attrs, "relation": HELDOUT_LOOK["relation"]}


def heldout_item(index: int, seed: int, image_size: int, num_concepts: int, s: float,
                 n_captions: int = 5) -> tuple[bytes, str, Attrs, list[str]]:
    """A clean held-out image with ``n_captions`` distinct correct captions."""
    stratum, attrs = heldout_attrs(index, seed, num_concepts, s)
    image = encode_jpeg(render(attrs, image_size, _rng(seed, "heldout", index, "render")))
    rng, captions = _rng(seed, "heldout", index, "caption"), []
    for _ in range(50 * n_captions):
        c = make_caption(attrs, rng, p_size=0.5, p_filler=0.2)
        if c.lower() not in {x.lower() for x in captions}:
            captions.append(c)
        if len(captions) == n_captions:
            break
    while len(captions) < n_captions:  # practically unreachable; keeps the 5-caption contract
        captions.append(f"{captions[0]} ({len(captions)})")
    return image, stratum, attrs, captions


def write_heldout(root: Path, num: int, seed: int, image_size: int, num_concepts: int, s: float) -> Path:
    """``root/images``, ``root/karpathy.json`` (split "test") and ``root/karpathy_strata.json`` (split = stratum)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, sentid = [], 0
    for i in range(num):
        data, stratum, attrs, captions = heldout_item(i, seed, image_size, num_concepts, s)
        name = f"{i:05d}.jpg"
        atomic_write_with(image_dir / name, lambda tmp, d=data: Path(tmp).write_bytes(d))
        sentences = [{"raw": c, "tokens": c.lower().replace(",", " ").split(), "imgid": i, "sentid": sentid + k}
                     for k, c in enumerate(captions)]
        images.append({"filename": name, "filepath": "", "split": "test", "imgid": i, "sentences": sentences,
                       "sentids": [x["sentid"] for x in sentences], "stratum": stratum, "attributes": attrs})
        sentid += len(sentences)
    by_stratum = [{**e, "split": e["stratum"]} for e in images]
    atomic_write_text(root / "karpathy_strata.json", json.dumps({"images": by_stratum, "dataset": "synth-longtail"}))
    path = root / "karpathy.json"
    atomic_write_text(path, json.dumps({"images": images, "dataset": "synth-longtail"}, indent=1))
    return path


TEMPLATES: dict[str, list[str]] = {
    "object": ["a {c}.", "a photo of a {c}.", "a picture of a {c}.", "a {c} icon."],
    "colour": ["a {c} shape.", "a photo of a {c} object.", "something {c}.", "a {c} icon."],
}


def write_classification_split(out: str | Path, attribute: str = "object", n_per_class: int = 50, seed: int = 0,
                               image_size: int = 80, num_concepts: int = 384, zipf_s: float = 1.1) -> Path:
    """ImageFolder tree ``out/<class>/*.jpg`` of single objects, ``classnames.json`` / ``templates.json``
    (CLIP_benchmark layout, dataset ``synth_longtail_<attribute>``) and ``classes.json`` (each class's
    rank and stratum). ``attribute`` "object" has one class per concept (uniform colours), "colour" one
    per palette colour (uniform concepts)."""
    if attribute not in TEMPLATES:
        raise ValueError(f"attribute must be one of {sorted(TEMPLATES)} in the long-tail world, got {attribute!r}")
    root, concepts = Path(out), catalogue(num_concepts)
    bands = strata(num_concepts, zipf_s)
    if attribute == "object":
        classes = {c.name: [c.rank - 1] for c in concepts}
        info = {c.name: {"rank": c.rank, "stratum": bands[c.rank - 1]} for c in concepts}
    else:
        classes = {c: list(range(num_concepts)) for c in COLOURS}
        info = {c: {"rank": k + 1} for k, c in enumerate(COLOURS)}
    for cls, pool in sorted(classes.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = _rng(seed, f"cls-{attribute}-{cls}", i, "all")
            attrs = sample_attrs(rng, num_concepts, zipf_s, pool=pool, pair=False)
            if attribute == "colour":
                attrs["objects"][0]["colour"] = cls
            img = encode_jpeg(render(attrs, image_size, rng))
            atomic_write_with(root / cls / f"{i:05d}.jpg", lambda tmp, d=img: Path(tmp).write_bytes(d))
    name = f"synth_longtail_{attribute}"
    atomic_write_text(root / "classnames.json", json.dumps({name: sorted(classes)}, indent=1))
    atomic_write_text(root / "templates.json", json.dumps({name: TEMPLATES[attribute]}, indent=1))
    atomic_write_text(root / "classes.json", json.dumps(info, indent=1))
    return root


# --------------------------------------------------------------------------------------------
# the corpus


def generate_longtail(out: str | Path, num_train: int = 10000, num_heldout: int = 500, noise_rate: float = 0.2,
                      seed: int = 0, image_size: int = 80, shard_size: int = 1000, workers: int = 1,
                      zipf_s: float = 1.1, num_concepts: int = 384, zeroshot_per_class: int = 2,
                      progress: Callable[[int], None] | None = None) -> CorpusInfo:
    """Write ``out/train/*.tar`` (noisy), ``out/heldout/`` (clean, stratified by concept frequency),
    ``out/zeroshot/`` (one class per concept) and ``out/stats.json``."""
    if num_train < 1 or num_heldout < 0 or shard_size < 1 or image_size < 16:
        raise ValueError("need num_train >= 1, num_heldout >= 0, shard_size >= 1, image_size >= 16")
    zipf_probs(2, zipf_s)  # validates s before any work
    catalogue(num_concepts)  # validates num_concepts
    root = Path(out)
    train_dir = root / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    plan = noise_plan(num_train, noise_rate, seed)
    jobs = [_ShardJob(str(train_dir / f"{k:05d}.tar"), start, tuple(plan[start:start + shard_size]), seed,
                      num_train, image_size, num_concepts, zipf_s)
            for k, start in enumerate(range(0, num_train, shard_size))]
    run_shard_jobs(jobs, workers, progress, _write_shard)
    heldout_json = write_heldout(root / "heldout", num_heldout, seed, image_size, num_concepts, zipf_s)
    if zeroshot_per_class > 0:
        write_classification_split(root / "zeroshot", "object", zeroshot_per_class, seed, image_size,
                                   num_concepts, zipf_s)
    counts = {"clean": plan.count("none"), **{k: plan.count(k) for k in NOISE_KINDS}}
    info = CorpusInfo(root=root, shards=shard_pattern(train_dir, len(jobs)), num_train=num_train,
                      heldout_json=heldout_json, heldout_image_root=root / "heldout" / "images",
                      num_heldout=num_heldout, noise_counts=counts)
    attrs_list = [train_attrs(seed, i, num_concepts, zipf_s) for i in range(num_train)]  # cheap: no rendering
    stats = {"world": "long-tail", "num_train": num_train, "num_heldout": num_heldout, "noise_rate": noise_rate,
             "seed": seed, "image_size": image_size, "shard_size": shard_size, "num_shards": len(jobs),
             "shards": info.shards, "noise_counts": counts, "zipf_s": zipf_s, "num_concepts": num_concepts,
             "heldout_per_stratum": {b: len(range(k, num_heldout, len(STRATA))) for k, b in enumerate(STRATA)},
             "heldout_fixed": HELDOUT_LOOK,
             "heldout_strata_json": str(root / "heldout" / "karpathy_strata.json"),
             "zeroshot": str(root / "zeroshot") if zeroshot_per_class > 0 else None,
             **corpus_stats(attrs_list, num_concepts, zipf_s)}
    atomic_write_text(root / "stats.json", json.dumps(stats, indent=1))
    return info
