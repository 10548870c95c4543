"""Synthetic noisy image/alt-text corpus: a small compositional world drawn with PIL.

Each image shows ``count`` objects of one ``colour`` and ``shape``, of one ``size``, grouped at one
``position``, on a ``background``. Captions are web-like (templates, synonyms, fillers such as
"stock photo" or "hd wallpaper") and always name the colour and the shape, which are the dominant,
clearly visible attributes, so a tiny dual encoder learns them in minutes on a CPU.

A fraction of training captions is noisy, like web alt-text: swapped with another image's caption,
junk ("IMG_2041.JPG", "click to enlarge"), or one attribute wrong. A fixed subset of (colour, shape)
combinations is held out: those combinations never appear in training images nor in training
captions (noisy ones included), and a clean held-out split built only from them (5 captions per
image) measures compositional generalisation, written as a Karpathy-style JSON.

Everything is deterministic given the seed: every sample draws from its own RNG keyed by
(seed, split, index), so the output does not depend on the number of worker processes.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.shards import expand_urls, iter_samples

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
COUNTS: tuple[str, ...] = ("one", "two", "three")
BACKGROUNDS: tuple[str, ...] = ("grey", "beige", "striped", "checkered", "dotted", "grainy")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": COLOURS, "shape": SHAPES, "size": SIZES,
    "position": POSITIONS, "count": COUNTS, "background": BACKGROUNDS,
}
NOISE_KINDS: tuple[str, ...] = ("swap", "junk", "wrong_attr")

# The held-out combinations depend only on the fraction, not on the corpus seed, so corpora
# generated with different seeds share one held-out set and can be compared.
HELDOUT_COMBO_SEED = 1234

RGB = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 225), "yellow": (245, 215, 25),
    "purple": (140, 45, 180), "orange": (250, 135, 15), "white": (248, 248, 248), "black": (15, 15, 15),
}
# Mid-tone backgrounds, so that white, black and yellow objects all stand out.
BG_RGB = {"grey": (128, 128, 128), "beige": (170, 150, 115)}

Attrs = dict[str, str]


# --------------------------------------------------------------------------------------------
# held-out combinations and attribute sampling


def heldout_combos(fraction: float = 0.15) -> list[tuple[str, str]]:
    """A fixed subset of (colour, shape) pairs, spread so every colour and shape keeps partners."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    n = round(fraction * len(combos))
    per_value = max(1, math.ceil(n / min(len(COLOURS), len(SHAPES))))
    rng = random.Random(HELDOUT_COMBO_SEED)
    rng.shuffle(combos)
    chosen: list[tuple[str, str]] = []
    used: dict[str, int] = {}
    for c, s in combos:
        if len(chosen) == n:
            break
        if used.get(c, 0) < per_value and used.get(s, 0) < per_value:
            chosen.append((c, s))
            used[c] = used.get(c, 0) + 1
            used[s] = used.get(s, 0) + 1
    return sorted(chosen)


def train_combos(fraction: float = 0.15) -> list[tuple[str, str]]:
    held = set(heldout_combos(fraction))
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]


Fixed = tuple[tuple[str, str], ...]  # scene attributes held at one value: (("count", "one"), ...)
FIXABLE = ("size", "position", "count", "background")  # colour and shape make the held-out combinations


def parse_fixed(text: str) -> Fixed:
    """"count=one,background=grey" -> (("background", "grey"), ("count", "one")); errors name the fix."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if name not in FIXABLE:
            raise ValueError(f"fix {part!r}: only {', '.join(FIXABLE)} can be fixed (colour and shape make the "
                             "held-out combinations); write attribute=value, comma-separated")
        if value not in ATTRIBUTES[name]:
            raise ValueError(f"fix {part!r}: {name} is one of {', '.join(ATTRIBUTES[name])}")
        out[name] = value
    return tuple(sorted(out.items()))


def scene_flag_error(fix: str, colour_mention: float) -> str | None:
    """The one-line message for a bad ``--fix`` or ``--colour-mention``, named by flag; None when both are good.
    The CLIs (``data synth``, ``demo``) turn it into a UserError before any work starts."""
    try:
        parse_fixed(fix)
    except ValueError as exc:
        return f"--{exc}"
    if not 0.0 <= colour_mention <= 1.0:
        return f"--colour-mention {colour_mention}: must be between 0 and 1"
    return None


def sample_attrs(rng: random.Random, combos: list[tuple[str, str]], fixed: Fixed = ()) -> Attrs:
    """A random scene of one of ``combos``; ``fixed`` attributes take their given value (drawn first
    all the same, so the others come out as in the unfixed world)."""
    colour, shape = rng.choice(combos)
    attrs = {
        "colour": colour, "shape": shape, "size": rng.choice(SIZES), "position": rng.choice(POSITIONS),
        "count": rng.choice(COUNTS), "background": rng.choice(BACKGROUNDS),
    }
    attrs.update(fixed)
    return attrs


# --------------------------------------------------------------------------------------------
# rendering

SS = 2  # supersampling factor: draw at 2x, downsample for anti-aliased edges


def _shape_points(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Polygon of ``shape`` centred at (cx, cy) with outer radius ``r``, rotated by ``rot`` rad."""
    if shape == "square":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        pts = [(x * 0.85, y * 0.85) for x, y in pts]
    elif shape == "diamond":
        pts = [(0, -r), (0.7 * r, 0), (0, r), (-0.7 * r, 0)]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        pts = [(x, y + 0.15 * r) for x, y in pts]
    elif shape == "hexagon":
        pts = [(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3)) for k in range(6)]
    elif shape == "star":
        pts = [((r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif shape == "cross":
        a, b = 0.32 * r, r
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
               (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    elif shape == "heart":
        ts = [2 * math.pi * k / 40 for k in range(40)]
        pts = [(r * 16 * math.sin(t) ** 3 / 17, -r * (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                                       - math.cos(4 * t)) / 17 - 0.1 * r) for t in ts]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cr, sr = math.cos(rot), math.sin(rot)
    return [(cx + x * cr - y * sr, cy + x * sr + y * cr) for x, y in pts]


def _draw_background(img: Image.Image, bg: str, rng: random.Random) -> None:
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    base = BG_RGB.get(bg, (128, 128, 128))
    draw.rectangle([0, 0, size, size], fill=base)
    dark, light = (105, 105, 105), (150, 150, 150)
    step = max(4, size // rng.choice((6, 8, 10)))
    if bg == "striped":
        for x in range(0, size, 2 * step):
            draw.rectangle([x, 0, x + step - 1, size], fill=dark)
        if rng.random() < 0.5:  # horizontal stripes half the time
            img.paste(img.transpose(Image.Transpose.ROTATE_90))
    elif bg == "checkered":
        for i, x in enumerate(range(0, size, step)):
            for j, y in enumerate(range(0, size, step)):
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=dark if (i + j) % 2 else light)
    elif bg == "dotted":
        rad = max(1, step // 5)
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=(90, 90, 90))
    elif bg == "grainy":
        noise = np.random.default_rng(rng.getrandbits(63)).normal(128, 22, (size, size, 1))
        img.paste(Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8).repeat(3, axis=2)))


def _object_centres(attrs: Attrs, size: float, diam: float, rng: random.Random) -> list[tuple[float, float]]:
    """Centres of ``count`` objects grouped at ``position`` (side by side along the free axis)."""
    n = COUNTS.index(attrs["count"]) + 1
    anchor = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
              "centre": (0.5, 0.5)}[attrs["position"]]
    vertical = attrs["position"] in ("left", "right")
    gap = min(diam * 1.15, (size - diam) / max(1, n - 1)) if n > 1 else 0.0
    centres = []
    for k in range(n):
        off = (k - (n - 1) / 2) * gap
        jx, jy = (rng.uniform(-0.03, 0.03) * size for _ in range(2))
        x, y = anchor[0] * size + jx, anchor[1] * size + jy
        centres.append((x, y + off) if vertical else (x + off, y))
    return centres


def render(attrs: Attrs, image_size: int, rng: random.Random, object_scale: float = 1.0) -> Image.Image:
    """Draw one image of ``attrs`` (RGB, ``image_size`` square). ``object_scale`` multiplies the
    objects' diameter (small 0.2, large 0.4 of the side; 0.85 of that for two or three); a larger
    scale stops where ``count`` of them still fit side by side (0.9 / count of the side) and never
    draws them smaller than scale 1 does."""
    big = image_size * SS
    img = Image.new("RGB", (big, big))
    _draw_background(img, attrs["background"], rng)
    draw = ImageDraw.Draw(img)
    n = COUNTS.index(attrs["count"]) + 1
    frac = (0.2 if attrs["size"] == "small" else 0.4) * (1.0 if n == 1 else 0.85)
    if object_scale != 1.0:  # larger: up to what fits side by side, never below the default
        scaled = frac * object_scale
        frac = scaled if object_scale < 1.0 else max(frac, min(scaled, 0.9 / n))
    diam = frac * big
    base = RGB[attrs["colour"]]
    fill = tuple(int(min(255, max(0, v + rng.randint(-12, 12)))) for v in base)
    outline = (60, 60, 60) if attrs["colour"] == "white" else None
    for cx, cy in _object_centres(attrs, big, diam, rng):
        rot = rng.uniform(-0.2, 0.2)
        r = diam / 2
        if attrs["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=SS)
        else:
            draw.polygon(_shape_points(attrs["shape"], cx, cy, r, rot), fill=fill, outline=outline, width=SS)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# captions

COLOUR_WORDS = {"purple": ["purple", "purple", "violet"], "grey": ["grey", "gray"]}
SHAPE_WORDS = {  # (singular, plural)
    "circle": [("circle", "circles"), ("disc", "discs"), ("round dot", "round dots")],
    "square": [("square", "squares"), ("block", "blocks")],
    "triangle": [("triangle", "triangles")],
    "star": [("star", "stars")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs")],
    "diamond": [("diamond", "diamonds"), ("rhombus", "rhombuses")],
    "hexagon": [("hexagon", "hexagons")],
    "heart": [("heart", "hearts")],
}
COUNT_WORDS = {"one": ["a", "one", "a single"], "two": ["two", "2", "a pair of"], "three": ["three", "3"]}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
POSITION_WORDS = {
    "left": ["on the left", "on the left side", "to the left"],
    "right": ["on the right", "on the right side", "to the right"],
    "top": ["at the top", "in the upper part", "near the top"],
    "bottom": ["at the bottom", "in the lower part", "near the bottom"],
    "centre": ["in the centre", "in the center", "in the middle"],
}
BACKGROUND_WORDS = {
    "grey": ["grey", "gray"], "beige": ["beige", "tan"], "striped": ["striped", "stripes"],
    "checkered": ["checkered", "checkerboard"], "dotted": ["dotted", "polka dot"], "grainy": ["grainy", "noisy"],
}
PREFIXES = ["", "", "", "photo of", "a picture of", "image of", "stock photo of", "illustration of",
            "close up of", "drawing of", "cute", "new", "simple"]
SUFFIXES = ["", "", "", "stock image", "hd wallpaper", "free download", "vector illustration", "icon", "clipart",
            "royalty free", "png", "- stock photo", "| free vector", "4k", "wallpaper", "for sale"]


def _word(table: dict[str, list[str]], value: str, rng: random.Random) -> str:
    return rng.choice(table.get(value, [value]))


def _noun_parts(attrs: Attrs, rng: random.Random, mention: set[str]) -> tuple[str, str, str]:
    """(lead words such as count and size, colour word, shape word) with plural agreement."""
    sing, plur = rng.choice(SHAPE_WORDS[attrs["shape"]])
    lead = []
    if "count" in mention:
        lead.append(_word(COUNT_WORDS, attrs["count"], rng))
    if "size" in mention:
        lead.append(_word(SIZE_WORDS, attrs["size"], rng))
    shape = plur if attrs["count"] != "one" else sing
    return " ".join(lead), _word(COLOUR_WORDS, attrs["colour"], rng), shape


def _background_phrase(attrs: Attrs, rng: random.Random) -> str:
    w = _word(BACKGROUND_WORDS, attrs["background"], rng)
    return rng.choice([f"on a {w} background", f"on {w}", f"against a {w} backdrop", f"{w} background"])


def make_caption(attrs: Attrs, rng: random.Random, p_mention: float = 0.5, p_filler: float = 0.5,
                 force: str | None = None, p_colour: float = 1.0) -> str:
    """A web-like caption naming the shape, the colour with ``p_colour``, other attributes each with
    ``p_mention``.

    ``force`` names an attribute that must be mentioned (used for wrong-attribute noise).
    """
    mention = {a for a in ("count", "size", "position", "background") if rng.random() < p_mention}
    if force and force not in ("colour", "shape"):
        mention.add(force)
    lead, colour, shape = _noun_parts(attrs, rng, mention)
    pos = _word(POSITION_WORDS, attrs["position"], rng) if "position" in mention else ""
    bg = _background_phrase(attrs, rng) if "background" in mention else ""
    form = rng.randrange(4)
    # drawn only below 1, so that the default captions (and every corpus made with them) stay as they were
    if p_colour < 1.0 and force != "colour" and rng.random() >= p_colour:
        colour = ""
        form = form % 3  # no "stars in" without a colour
    if form == 3:  # "two stars in red on the left"
        parts = [lead, shape, "in", colour, pos, bg]
    else:
        np_ = " ".join(w for w in (lead, colour, shape) if w)
        parts = {0: [np_, pos, bg], 1: [np_ + ("," if bg or pos else ""), bg, pos], 2: [pos or bg, np_]}[form]
    core = " ".join(w for w in parts if w)
    if rng.random() < p_filler:
        core = " ".join(w for w in (rng.choice(PREFIXES), core, rng.choice(SUFFIXES)) if w)
    return _case(core, rng)


def _case(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return text.title()
    if r < 0.55:
        return text[:1].upper() + text[1:]
    return text


JUNK = ["image", "click to enlarge", "untitled", "photo", "no description available", "placeholder", "banner",
        "logo", "spacer", "default image", "loading...", "thumbnail", "picture", "img", "view larger", "home",
        "read more", "advertisement", "image not found", "header"]


def junk_caption(rng: random.Random) -> str:
    """Alt-text that says nothing about the image, as many real web images have."""
    r = rng.randrange(6)
    if r == 0:
        return f"IMG_{rng.randint(1000, 9999)}.JPG"
    if r == 1:
        return f"DSC{rng.randint(10000, 99999)}.jpg"
    if r == 2:
        return f"thumbnail {rng.choice([100, 150, 300, 640])}x{rng.choice([75, 100, 200, 480])}"
    if r == 3:
        day = f"20{rng.randint(10, 23)}-0{rng.randint(1, 9)}-{rng.randint(10, 28)}"
        return f"Screen Shot {day} at {rng.randint(1, 12)}.{rng.randint(10, 59)}.{rng.randint(10, 59)} PM"
    if r == 4:
        return f"product image {rng.randint(1, 9)}"
    return rng.choice(JUNK)


def wrong_attrs(attrs: Attrs, rng: random.Random, combos: set[tuple[str, str]]) -> tuple[Attrs, str]:
    """Replace one attribute (colour/shape most often) keeping (colour, shape) inside ``combos``."""
    name = rng.choices(["colour", "shape", "count", "size", "position"], weights=[3, 3, 1, 1, 1])[0]
    options = [v for v in ATTRIBUTES[name] if v != attrs[name]]
    if name == "colour":
        options = [c for c in options if (c, attrs["shape"]) in combos]
    elif name == "shape":
        options = [s for s in options if (attrs["colour"], s) in combos]
    if not options:  # no allowed substitute: fall back to an attribute that is always free
        name, options = "count", [v for v in COUNTS if v != attrs["count"]]
    out = dict(attrs)
    out[name] = rng.choice(options)
    return out, name


# --------------------------------------------------------------------------------------------
# samples


def _rng(seed: int, split: str, index: int, stream: str) -> random.Random:
    # string seeds are hashed with sha512: stable across processes and Python runs
    return random.Random(f"openalign-synth:{seed}:{split}:{index}:{stream}")


def _train_attrs(seed: int, index: int, combos: list[tuple[str, str]], colour_block: int = 0,
                 fixed: Fixed = ()) -> Attrs:
    """``colour_block`` > 0: images come in runs of that many of one colour (colours in turn), so a
    training batch read in order holds few colours and only shape and the rest tell its images apart
    (hard negatives; a tiny model otherwise learns colour alone). 0: colours drawn at random."""
    if colour_block > 0:
        colour = COLOURS[(index // colour_block) % len(COLOURS)]
        combos = [c for c in combos if c[0] == colour] or combos
    return sample_attrs(_rng(seed, "train", index, "attrs"), combos, fixed)


def train_sample(index: int, seed: int, noise: str, num_train: int, image_size: int,
                 combos: list[tuple[str, str]], colour_block: int = 0, object_scale: float = 1.0,
                 fixed: Fixed = (), colour_mention: float = 1.0) -> dict:
    """One training sample: JPEG bytes, caption and metadata; ``noise`` is "none" or a NOISE_KINDS entry."""
    attrs = _train_attrs(seed, index, combos, colour_block, fixed)
    rng = _rng(seed, "train", index, "caption")
    image = encode_jpeg(render(attrs, image_size, _rng(seed, "train", index, "render"), object_scale))
    clean = make_caption(attrs, rng, p_colour=colour_mention)
    meta: dict = {"attributes": attrs, "clean_caption": clean, "noisy": noise != "none", "noise": noise}
    if noise == "none":
        caption = clean
    elif noise == "junk":
        caption = junk_caption(rng)
    elif noise == "swap":
        other, other_attrs = _unrelated(index, seed, num_train, attrs, combos, rng, colour_block, fixed)
        # the other image's own clean caption: its caption RNG's first draw, recomputed here
        cap_rng = _rng(seed, "train", other, "caption") if other >= 0 else rng
        caption = make_caption(other_attrs, cap_rng, p_colour=colour_mention)
        meta["swapped_with"], meta["caption_attributes"] = other, other_attrs
    elif noise == "wrong_attr":
        bad, name = wrong_attrs(attrs, rng, set(combos))
        caption = make_caption(bad, rng, force=name, p_colour=colour_mention)
        meta["wrong_attribute"], meta["caption_attributes"] = name, bad
    else:
        raise ValueError(f"unknown noise kind {noise!r}")
    return {"image": image, "caption": caption, "meta": meta}


def _unrelated(index: int, seed: int, num_train: int, attrs: Attrs, combos: list[tuple[str, str]],
               rng: random.Random, colour_block: int = 0, fixed: Fixed = ()) -> tuple[int, Attrs]:
    """Another training image whose (colour, shape) differs from this one's."""
    for _ in range(100):
        other = rng.randrange(num_train)
        other_attrs = _train_attrs(seed, other, combos, colour_block, fixed)
        if (other_attrs["colour"], other_attrs["shape"]) != (attrs["colour"], attrs["shape"]):
            return other, other_attrs
    # a corpus (almost) made of one combination: fall back to a fresh unrelated description
    others = [c for c in combos if c != (attrs["colour"], attrs["shape"])] or combos
    return -1, sample_attrs(rng, others, fixed)


def noise_plan(num_train: int, noise_rate: float, seed: int) -> list[str]:
    """Exactly round(noise_rate * N) noisy samples at seeded positions, kinds in equal thirds."""
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    plan = ["none"] * num_train
    order = np.random.default_rng([seed, 7]).permutation(num_train)
    for k, i in enumerate(order[: round(noise_rate * num_train)]):
        plan[int(i)] = NOISE_KINDS[k % len(NOISE_KINDS)]
    return plan


# --------------------------------------------------------------------------------------------
# writing shards


@dataclass(frozen=True)
class _ShardJob:
    path: str
    start: int
    noise: tuple[str, ...]  # one entry per sample of this shard
    seed: int
    num_train: int
    image_size: int
    combos: tuple[tuple[str, str], ...]
    colour_block: int = 0
    object_scale: float = 1.0
    fixed: Fixed = ()
    colour_mention: float = 1.0


def write_sample_shard(path: str, start: int, image_size: int, samples: Iterable[dict[str, Any]]) -> int:
    """Write ``train_sample``-style dicts, keyed from ``start``, as one shard atomically (a truncated
    tar would be read as a broken shard); both worlds write their shards through it."""
    written = 0

    def write(tmp: str) -> None:
        nonlocal written
        with open(tmp, "wb") as fh, wds.TarWriter(fh, mtime=0.0) as sink:
            for i, s in enumerate(samples, start):
                key = f"{i:09d}"
                meta = {"key": key, "caption": s["caption"], "status": "success", "width": image_size,
                        "height": image_size, **s["meta"]}
                sink.write({"__key__": key, "jpg": s["image"], "txt": s["caption"].encode("utf-8"),
                            "json": json.dumps(meta).encode("utf-8")})
                written += 1

    atomic_write_with(path, write)
    return written


def _write_shard(job: _ShardJob) -> int:
    return write_sample_shard(job.path, job.start, job.image_size, (
        train_sample(job.start + k, job.seed, noise, job.num_train, job.image_size, list(job.combos), job.colour_block,
                     job.object_scale, job.fixed, job.colour_mention)
        for k, noise in enumerate(job.noise)))


def run_shard_jobs(jobs: Sequence[Any], workers: int, progress: Callable[[int], None] | None,
                   write: Callable[[Any], int] = _write_shard) -> None:
    """Run ``write(job)`` for every shard job, in spawned worker processes when ``workers`` > 1."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            n = write(job)
            if progress:
                progress(n)
        return
    with get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        for n in pool.imap_unordered(write, jobs):
            if progress:
                progress(n)


def shard_pattern(train_dir: Path, num_shards: int) -> str:
    if num_shards == 1:
        return str(train_dir / "00000.tar")
    return str(train_dir / f"{{00000..{num_shards - 1:05d}}}.tar")


# --------------------------------------------------------------------------------------------
# held-out split


def heldout_item(index: int, seed: int, image_size: int, combos: list[tuple[str, str]],
                 n_captions: int = 5, object_scale: float = 1.0, fixed: Fixed = ()) -> tuple[bytes, Attrs, list[str]]:
    """A clean held-out image with ``n_captions`` distinct, correct and detailed captions."""
    attrs = sample_attrs(_rng(seed, "heldout", index, "attrs"), combos, fixed)
    image = encode_jpeg(render(attrs, image_size, _rng(seed, "heldout", index, "render"), object_scale))
    rng = _rng(seed, "heldout", index, "caption")
    captions: list[str] = []
    for _ in range(50 * n_captions):
        c = make_caption(attrs, rng, p_mention=0.75, p_filler=0.2)
        if c.lower() not in {x.lower() for x in captions}:
            captions.append(c)
        if len(captions) == n_captions:
            break
    while len(captions) < n_captions:  # practically unreachable; keeps the 5-caption contract
        captions.append(f"{captions[0]} ({len(captions)})")
    return image, attrs, captions


def write_heldout(root: Path, num: int, seed: int, image_size: int, combos: list[tuple[str, str]],
                  object_scale: float = 1.0, fixed: Fixed = ()) -> Path:
    """Images under ``root/images`` and a Karpathy-style ``root/karpathy.json`` (split "test")."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, sentid = [], 0
    for i in range(num):
        data, attrs, captions = heldout_item(i, seed, image_size, combos, object_scale=object_scale, fixed=fixed)
        name = f"{i:05d}.jpg"
        (image_dir / name).write_bytes(data)
        sentences = [{"raw": c, "tokens": c.lower().replace(",", " ").split(), "imgid": i, "sentid": sentid + k}
                     for k, c in enumerate(captions)]
        images.append({"filename": name, "filepath": "", "split": "test", "imgid": i, "sentences": sentences,
                       "sentids": [s["sentid"] for s in sentences], "attributes": attrs})
        sentid += len(sentences)
    path = root / "karpathy.json"
    atomic_write_text(path, json.dumps({"images": images, "dataset": "synth"}, indent=1))
    return path


# --------------------------------------------------------------------------------------------
# the corpus


WORLDS: tuple[str, ...] = ("toy", "long-tail")


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`generate_corpus` makes: its keyword arguments, with the same defaults."""

    num_train: int = field(default=10000, metadata={"help": "training images"})
    num_heldout: int = field(default=500, metadata={"help": "clean held-out images (unseen colour/shape combos)"})
    noise_rate: float = field(default=0.2, metadata={"help": "fraction of noisy training captions"})
    seed: int = 0
    image_size: int = field(default=80, metadata={"help": "image side in pixels"})
    shard_size: int = field(default=1000, metadata={"help": "samples per shard"})
    heldout_fraction_of_combos: float = field(default=0.15, metadata={
        "flag": "--heldout-fraction", "help": "fraction of colour/shape combos held out"})
    workers: int = field(default=1, metadata={"help": "processes writing shards"})
    world: str = field(default="toy", metadata={"choices": WORLDS, "help": (
        "toy: 64 colour+shape combos; long-tail: hundreds of Zipf-distributed concepts (synth_longtail)")})
    zipf_s: float = field(default=1.1, metadata={"help": "long-tail world: Zipf exponent s, p(rank r) ~ 1/r^s"})
    num_concepts: int = field(default=384, metadata={"help": "long-tail world: object concepts, 3..384"})
    colour_block: int = field(default=0, metadata={"help": (
        "toy world: training images in runs of this many of one colour (hard-negative batches); 0 = random")})
    object_scale: float = field(default=1.0, metadata={"help": (
        "toy world: objects' diameter times this (capped so that three fit); 1 = small 0.2, large 0.4 of the side")})
    fix: str = field(default="", metadata={"help": (
        "toy world: scene attributes held at one value, e.g. count=one,background=grey (size, position, "
        "count, background); captions still name them at random")})
    colour_mention: float = field(default=1.0, metadata={"help": (
        "toy world: share of clean training captions that name the colour (held-out captions always do)")})


@dataclass(frozen=True)
class CorpusInfo:
    root: Path  # output dir
    shards: str  # brace pattern, e.g. "/x/train/{00000..00009}.tar"
    num_train: int
    heldout_json: Path  # Karpathy JSON
    heldout_image_root: Path
    num_heldout: int
    noise_counts: dict[str, int]


def generate_corpus(out: str | Path, num_train: int = 10000, num_heldout: int = 500, noise_rate: float = 0.2,
                    seed: int = 0, image_size: int = 80, shard_size: int = 1000,
                    heldout_fraction_of_combos: float = 0.15, workers: int = 1, world: str = "toy",
                    zipf_s: float = 1.1, num_concepts: int = 384, colour_block: int = 0, object_scale: float = 1.0,
                    fix: str = "", colour_mention: float = 1.0,
                    progress: Callable[[int], None] | None = None) -> CorpusInfo:
    """Write ``out/train/*.tar`` (noisy), ``out/heldout/`` (clean, unseen combos) and ``out/stats.json``.

    ``progress`` is called with the number of training samples written after each shard.
    ``colour_block`` > 0 orders training images in single-colour runs (see :func:`_train_attrs`).
    ``object_scale`` scales the drawn objects, training and held-out alike (see :func:`render`).
    ``colour_mention`` < 1 leaves the colour out of that share of training captions (the shape is always named).
    ``fix`` holds scene attributes at one value (see :func:`parse_fixed`), training and held-out alike.
    ``world="long-tail"`` writes :mod:`openalign.corpus.synth_longtail`'s world instead (``zipf_s``,
    ``num_concepts`` are its own; ``heldout_fraction_of_combos`` is the toy world's).
    """
    if world not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    if world == "long-tail":
        from openalign.corpus.synth_longtail import generate_longtail  # imports this module: import here
        return generate_longtail(out, num_train=num_train, num_heldout=num_heldout, noise_rate=noise_rate, seed=seed,
                                 image_size=image_size, shard_size=shard_size, workers=workers, zipf_s=zipf_s,
                                 num_concepts=num_concepts, progress=progress)
    if num_train < 1 or num_heldout < 0 or shard_size < 1 or image_size < 16:
        raise ValueError("need num_train >= 1, num_heldout >= 0, shard_size >= 1, image_size >= 16")
    if not 0.0 <= colour_mention <= 1.0:
        raise ValueError(f"colour_mention must be in [0, 1], got {colour_mention}")
    fixed = parse_fixed(fix)
    root = Path(out)
    train_dir = root / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    combos, held = train_combos(heldout_fraction_of_combos), heldout_combos(heldout_fraction_of_combos)
    plan = noise_plan(num_train, noise_rate, seed)
    jobs = [_ShardJob(str(train_dir / f"{k:05d}.tar"), start, tuple(plan[start:start + shard_size]), seed,
                      num_train, image_size, tuple(combos), colour_block, object_scale, fixed,
                      colour_mention)
            for k, start in enumerate(range(0, num_train, shard_size))]
    run_shard_jobs(jobs, workers, progress)
    heldout_json = write_heldout(root / "heldout", num_heldout, seed, image_size, held or combos, object_scale, fixed)
    counts = {"clean": plan.count("none"), **{k: plan.count(k) for k in NOISE_KINDS}}
    info = CorpusInfo(root=root, shards=shard_pattern(train_dir, len(jobs)), num_train=num_train,
                      heldout_json=heldout_json, heldout_image_root=root / "heldout" / "images",
                      num_heldout=num_heldout, noise_counts=counts)
    stats = {"num_train": num_train, "num_heldout": num_heldout, "noise_rate": noise_rate, "seed": seed,
             "image_size": image_size, "shard_size": shard_size, "colour_block": colour_block,
             "object_scale": object_scale, "fixed": dict(fixed), "colour_mention": colour_mention,
             "num_shards": len(jobs), "shards": info.shards,
             "noise_counts": counts, "heldout_combos": [list(c) for c in held],
             "train_combos": [list(c) for c in combos], "attributes": {k: list(v) for k, v in ATTRIBUTES.items()}}
    atomic_write_text(root / "stats.json", json.dumps(stats, indent=1))
    return info


def read_combos(shards: str) -> Iterator[tuple[str, str]]:
    """(colour, shape) of every image in synthetic shards (reads the ``KEY.json`` sidecars)."""

    for sample in iter_samples(expand_urls(shards), Counter()):
        attrs = json.loads(sample["json"])["attributes"]
        yield attrs["colour"], attrs["shape"]


# --------------------------------------------------------------------------------------------
# zero-shot classification splits

CLASSIFICATION_TEMPLATES: dict[str, list[str]] = {
    "colour": ["a {c} shape.", "a photo of a {c} object.", "something {c}.", "a {c} icon."],
    "shape": ["a {c}.", "a photo of a {c}.", "a picture of a {c}.", "a {c} icon."],
    "size": ["a {c} shape.", "a photo of a {c} object."],
    "position": ["a shape on the {c}.", "an object in the {c}."],
    "count": ["{c} shapes.", "a photo of {c} objects."],
    "background": ["a shape on a {c} background.", "an icon against a {c} backdrop."],
}


def write_classification_split(out: str | Path, attribute: str = "colour", n_per_class: int = 50, seed: int = 0,
                               image_size: int = 80, combos: str = "all",
                               heldout_fraction_of_combos: float = 0.15, world: str = "toy",
                               object_scale: float = 1.0, fix: str = "") -> Path:
    """ImageFolder tree ``out/<class>/*.jpg`` classifying one attribute, plus CLIP_benchmark-style
    ``classnames.json`` / ``templates.json`` (keyed by the dataset name ``synth_<attribute>``).

    ``combos`` picks the (colour, shape) pairs drawn: "all", "train" or "heldout".
    ``world="long-tail"``: attribute "object" (one class per concept) or "colour", see synth_longtail.
    """
    if world == "long-tail":
        from openalign.corpus import synth_longtail  # imports this module: import here
        return synth_longtail.write_classification_split(out, attribute, n_per_class, seed, image_size)
    if world != "toy":
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {sorted(ATTRIBUTES)}, got {attribute!r}")
    fixed = tuple(f for f in parse_fixed(fix) if f[0] != attribute)  # the classified attribute still varies
    pool = {"all": [(c, s) for c in COLOURS for s in SHAPES], "train": train_combos(heldout_fraction_of_combos),
            "heldout": heldout_combos(heldout_fraction_of_combos)}[combos]
    root = Path(out)
    classes = sorted(ATTRIBUTES[attribute])  # ImageFolder orders classes by sorted folder name
    for cls in classes:
        # a colour (shape) class draws only the pool's pairs with that colour (shape)
        allowed = [p for p in pool if attribute not in ("colour", "shape")
                   or p[("colour", "shape").index(attribute)] == cls] or pool
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = _rng(seed, f"cls-{attribute}-{cls}", i, "all")
            attrs = {**sample_attrs(rng, allowed, fixed), attribute: cls}
            (root / cls / f"{i:05d}.jpg").write_bytes(encode_jpeg(render(attrs, image_size, rng, object_scale)))
    name = f"synth_{attribute}"
    atomic_write_text(root / "classnames.json", json.dumps({name: classes}, indent=1))
    atomic_write_text(root / "templates.json", json.dumps({name: CLASSIFICATION_TEMPLATES[attribute]}, indent=1))
    return root
