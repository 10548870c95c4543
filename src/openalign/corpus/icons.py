"""A real icon corpus: Iconify icon sets rendered to images, captioned from their names like web alt-text.

Icon sets draw the same concepts ("home", "bell", "trash") again and again, each by other designers,
and name every icon in words (name, aliases, categories) that read like alt-text, so they make a
small real image/text corpus with a true cross-source test: whole sets are held out of training.

Input is Iconify's JSON format (``{prefix, info, icons: {name: {body, width?, height?}}, aliases,
categories, width, height}``), read from the npm packages ``@iconify-json/<prefix>`` (``icons.json``
+ ``info.json`` + ``metadata.json``), from ``@iconify/json`` (``json/<prefix>.json``), from
``npm pack`` tarballs of either, or from loose JSON files. Only :func:`fetch_sets` calls npm, at build
time; reading a folder (``--from``) never touches the network.

Only sets whose SPDX licence is in :data:`ALLOWED_LICENCES` are used; every used set's licence,
author and icon count goes into ``stats.json`` and every sample's ``KEY.json`` names its set and
licence, which is the attribution those licences ask for.

Everything is deterministic given the seed: each image and caption draws from its own RNG keyed by
(seed, split, set, icon, variant), so the output does not depend on the number of worker processes.
"""

from __future__ import annotations

import colorsys
import io
import json
import random
import re
import shutil
import subprocess
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openalign.errors import UserError
from openalign.io import atomic_write_bytes, atomic_write_text, atomic_write_with
from openalign.media.shards import write_tar

# SPDX id -> why it may go into a training corpus. Allowed: permissive licences (redistribution and
# derived works allowed, attribution at most, which the per-sample JSON and stats.json carry) and
# OFL-1.1 (a font licence: it restricts selling the font files themselves, not pictures drawn with
# the glyphs). Left out on purpose: CC-BY-SA and GPL (share-alike/copyleft would bind the corpus and
# what is built from it), any NC or ND variant (no commercial use / no derivatives: rendering and
# training are derivatives), and custom or missing licences (nobody has checked what they allow).
ALLOWED_LICENCES: dict[str, str] = {
    "MIT": "permissive", "ISC": "permissive", "Apache-2.0": "permissive", "BSD-2-Clause": "permissive",
    "BSD-3-Clause": "permissive", "0BSD": "permissive", "Unlicense": "public-domain dedication",
    "CC0-1.0": "public-domain dedication", "CC-BY-4.0": "attribution only", "CC-BY-3.0": "attribution only",
    "OFL-1.1": "font licence; rendered pictures are not the font software",
}

# Trailing name words that say how an icon is drawn, not what it shows: "home-outline" and "home"
# are one concept. Only trailing words are dropped, so "fill-drip" or "line-chart" keep their meaning.
STYLE_WORDS = frozenset({
    "outline", "outlined", "fill", "filled", "solid", "rounded", "sharp", "line", "bold", "duotone", "twotone",
    "thin", "light", "regular", "alt", "variant", "o", "stroke", "glyph", "mini", "micro", "sm", "lg",
})
NOISE_KINDS: tuple[str, ...] = ("junk", "mismatch")
CLASSIFY_BY: tuple[str, ...] = ("category", "concept")
DEFAULT_SETS: tuple[str, ...] = ("tabler", "lucide", "mdi", "ph", "carbon")
SIDECARS = frozenset({"info.json", "metadata.json", "package.json", "chars.json", "collections.json"})


# --------------------------------------------------------------------------------------------
# reading icon sets


@dataclass(frozen=True)
class Icon:
    set: str  # the set's prefix
    name: str
    body: str  # SVG content inside <svg>
    left: float
    top: float
    width: float
    height: float
    rotate: int = 0  # quarter turns
    hflip: bool = False
    vflip: bool = False
    aliases: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def concept(self) -> str:
        return concept_of(self.name)


@dataclass(frozen=True)
class IconSet:
    prefix: str
    name: str
    author: str
    licence: dict[str, str]  # spdx, title, url
    source: str  # file it was read from
    icons: tuple[Icon, ...]
    hidden: int = 0  # icons the set marks hidden (deprecated): not rendered


def concept_of(name: str) -> str:
    """``"home-outline"`` -> ``"home"``, ``"arrow-left-bold"`` -> ``"arrow left"``, ``"home-2"`` -> ``"home"``."""
    words = [w for w in re.split(r"[-_:\s]+", name.lower()) if w]
    while len(words) > 1 and (words[-1] in STYLE_WORDS or words[-1].isdigit()):
        words.pop()
    return " ".join(words) or name.lower()


def _num(value: Any, default: float, where: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{where}: {value!r} is not a positive number; fix the icon set JSON")
    return float(value)


def _check_name(name: Any, where: str) -> str:
    # names become file names (heldout/images/<set>/<name>.png): no folders, no hidden files
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise UserError(f"{where}: {name!r} is not an icon name (letters, digits, '-', '_'); fix the icon set JSON")
    return name


def parse_set(data: Any, source: str, info: dict | None = None, metadata: dict | None = None) -> IconSet:
    """An :class:`IconSet` from Iconify JSON; ``info``/``metadata`` come from an npm package's side files."""
    if not isinstance(data, dict) or not isinstance(data.get("prefix"), str) or not isinstance(data.get("icons"), dict):
        raise UserError(f"{source}: not an Iconify icon set (fields 'prefix' and 'icons' missing); "
                        "pass icons.json files in Iconify's JSON format")
    prefix, meta = _check_name(data["prefix"], f"{source}: prefix"), {**(metadata or {}), **data}
    info = data.get("info") or info or {}
    dw, dh = _num(data.get("width"), 16.0, f"{source}: width"), _num(data.get("height"), 16.0, f"{source}: height")
    cats: dict[str, list[str]] = defaultdict(list)
    for cat, names in (meta.get("categories") or {}).items():
        for n in names if isinstance(names, list) else []:
            cats[n].append(cat)
    icons, hidden = {}, 0
    for name, ic in data["icons"].items():
        if not isinstance(ic, dict) or not isinstance(ic.get("body"), str):
            raise UserError(f"{source}: icons.{name}.body missing; every icon needs an SVG 'body' string")
        if ic.get("hidden"):
            hidden += 1
            continue
        where = f"{source}: icons.{name}"
        icons[_check_name(name, where)] = _icon(prefix, name, ic, dw, dh, where, tuple(cats.get(name, ())))
    author, lic = info.get("author"), info.get("license") or {}
    return IconSet(prefix=prefix, name=str(info.get("name") or prefix),
                   author=str(author.get("name", "") if isinstance(author, dict) else author or ""),
                   licence={k: str(lic.get(k, "")) for k in ("spdx", "title", "url")} if isinstance(lic, dict) else {},
                   source=source, icons=_with_aliases(icons, data.get("aliases") or {}, source), hidden=hidden)


def _with_aliases(icons: dict[str, Icon], aliases: dict, source: str) -> tuple[Icon, ...]:
    """Plain aliases become caption words of their parent; transformed ones become icons of their own."""
    words: dict[str, list[str]] = defaultdict(list)
    for name, al in aliases.items():
        parent = al.get("parent") if isinstance(al, dict) else None
        if parent not in icons or al.get("hidden"):
            continue  # an alias of a hidden icon, or of another alias: not worth chasing
        if any(k in al for k in ("rotate", "hFlip", "vFlip", "width", "height")):
            # arrow-left drawn as a flipped arrow-right is a picture of its own
            p = icons[parent]
            icons[_check_name(name, f"{source}: aliases.{name}")] = replace(
                p, name=name, aliases=(), rotate=(p.rotate + int(al.get("rotate", 0))) % 4,
                hflip=p.hflip ^ bool(al.get("hFlip")), vflip=p.vflip ^ bool(al.get("vFlip")))
        else:
            words[parent].append(name)
    return tuple(replace(i, aliases=tuple(words.get(n, ()))) for n, i in sorted(icons.items()))


def _icon(prefix: str, name: str, ic: dict, dw: float, dh: float, where: str, cats: tuple[str, ...]) -> Icon:
    return Icon(set=prefix, name=name, body=ic["body"], left=float(ic.get("left", 0) or 0),
                top=float(ic.get("top", 0) or 0), width=_num(ic.get("width"), dw, f"{where}.width"),
                height=_num(ic.get("height"), dh, f"{where}.height"), rotate=int(ic.get("rotate", 0) or 0) % 4,
                hflip=bool(ic.get("hFlip")), vflip=bool(ic.get("vFlip")), categories=cats)


def _load_json(raw: bytes, source: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: not valid JSON ({exc}); re-fetch or fix the file") from None


def _is_set(data: Any) -> bool:
    return isinstance(data, dict) and "prefix" in data and "icons" in data


def _sets_in_tarball(path: Path) -> Iterator[IconSet]:
    """``@iconify-json/<p>`` (package/icons.json + side files) or ``@iconify/json`` (package/json/*.json)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            files: dict[str, bytes] = {}
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if not (m.isfile() and base.endswith(".json")):
                    continue
                if "/json/" in m.name and base not in SIDECARS:  # @iconify/json: one whole set per file
                    data = _load_json(tar.extractfile(m).read(), f"{path}:{m.name}")
                    if _is_set(data):
                        yield parse_set(data, f"{path}:{m.name}")
                elif m.name.count("/") == 1 and base in ("icons.json", "info.json", "metadata.json"):
                    files[base] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: unreadable tarball ({exc}); delete it and fetch again") from None
    if "icons.json" in files:
        side = {k: _load_json(files[k], f"{path}:{k}") for k in ("info.json", "metadata.json") if k in files}
        yield parse_set(_load_json(files["icons.json"], f"{path}:icons.json"), f"{path}:package/icons.json",
                        side.get("info.json"), side.get("metadata.json"))


def _set_from_file(path: Path) -> IconSet | None:
    data = _load_json(path.read_bytes(), str(path))
    if not _is_set(data):
        if path.name == "icons.json":
            parse_set(data, str(path))  # raises the one-line error naming the missing fields
        return None
    side = {}
    if path.name == "icons.json":  # an unpacked @iconify-json package keeps info and categories beside it
        side = {k: _load_json((path.parent / k).read_bytes(), str(path.parent / k))
                for k in ("info.json", "metadata.json") if (path.parent / k).is_file()}
    return parse_set(data, str(path), side.get("info.json"), side.get("metadata.json"))


def read_sets(source: str | Path, skipped: Counter) -> list[IconSet]:
    """Every icon set under ``source`` (a folder, a JSON file or a tarball), the first of each prefix."""
    src = Path(source)
    if not src.exists():
        raise UserError(f"{src}: not found; pass --from a folder of Iconify icons.json files or npm tarballs")
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*") if p.is_file() and (p.name.endswith((".tgz", ".tar.gz")) or
                                                     (p.suffix == ".json" and p.name not in SIDECARS)))
    out: dict[str, IconSet] = {}
    for f in files:
        found = list(_sets_in_tarball(f)) if f.name.endswith((".tgz", ".tar.gz")) else [_set_from_file(f)]
        for s in found:
            if s is None:
                skipped["not_an_icon_set"] += 1
            elif s.prefix in out:
                skipped["duplicate_prefix"] += 1
            else:
                out[s.prefix] = s
    return [out[p] for p in sorted(out)]


def licence_reason(s: IconSet) -> str | None:
    """None when the set may be used, else why not (``"licence:CC-BY-SA-4.0"``, ``"no_licence"``)."""
    spdx = s.licence.get("spdx", "")
    if not spdx:
        return "no_licence"
    return None if spdx in ALLOWED_LICENCES else f"licence:{spdx}"


def fetch_sets(prefixes: Iterable[str], cache_dir: str | Path, npm: str = "npm") -> Path:
    """``npm pack`` each ``@iconify-json/<prefix>`` (``all``: ``@iconify/json``) into ``cache_dir``.

    Tarballs already in the cache are reused. Build time only; tests and the demo use ``--from``.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    exe = shutil.which(npm)
    if exe is None:
        raise UserError(f"{npm}: not found on PATH; install Node.js (npm) or pass --from a folder of icons.json files")
    for p in prefixes:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", p):
            raise UserError(f"--sets {p!r}: not an Iconify prefix (lowercase letters, digits, '-'), e.g. mdi,tabler")
        pkg, stem = ("@iconify/json", "iconify-json-") if p == "all" else (f"@iconify-json/{p}", f"iconify-json-{p}-")
        if any(f.name[len(stem):][:1].isdigit() for f in cache.glob(f"{stem}*.tgz")):
            continue
        res = subprocess.run([exe, "pack", pkg, "--pack-destination", str(cache), "--silent"],
                             check=False, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"npm pack {pkg}: failed ({last}); check the set prefix and the registry, "
                            "or pass --from a folder of icons.json files")
    return cache


# --------------------------------------------------------------------------------------------
# rendering


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(max(0.0, min(1.0, c)) * 255):02x}" for c in rgb)


def _luma(rgb: tuple[float, float, float]) -> float:
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def pick_colours(rng: random.Random) -> tuple[str, str, str]:
    """(foreground, background top, background bottom): a mostly light or dark page, an ink that stands out."""
    dark = rng.random() < 0.25
    bg = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.08, 0.22) if dark else rng.uniform(0.86, 1.0))
    for _ in range(20):
        fg = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0))
        if abs(_luma(fg) - _luma(bg)) > 0.4:
            break
    else:
        fg = (1.0, 1.0, 1.0) if dark else (0.0, 0.0, 0.0)
    shade = rng.uniform(-0.08, 0.08) if rng.random() < 0.5 else 0.0  # half get a soft vertical gradient
    bg2 = tuple(c + shade for c in bg)
    return _hex(fg), _hex(bg), _hex(bg2)  # type: ignore[arg-type]


def icon_svg(icon: Icon, size: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A square SVG of ``icon``: its body and viewBox, padded and shifted a little, in colour on a background."""
    w, h = (icon.height, icon.width) if icon.rotate % 2 else (icon.width, icon.height)
    side = max(w, h)
    pad = rng.uniform(0.06, 0.22) * side
    jx, jy = (rng.uniform(-0.05, 0.05) * side for _ in range(2))
    cx, cy = icon.left + icon.width / 2, icon.top + icon.height / 2  # the body's own centre
    x0, y0, span = cx - side / 2 - pad + jx, cy - side / 2 - pad + jy, side + 2 * pad
    fg, bg, bg2 = pick_colours(rng)
    transform = []
    if icon.rotate:
        transform.append(f"rotate({90 * icon.rotate} {cx:g} {cy:g})")
    if icon.hflip or icon.vflip:
        sx, sy = (-1 if icon.hflip else 1), (-1 if icon.vflip else 1)
        transform.append(f"translate({cx * (1 - sx):g} {cy * (1 - sy):g}) scale({sx} {sy})")
    g = f' transform="{" ".join(transform)}"' if transform else ""
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{size}" '
           f'height="{size}" viewBox="{x0:g} {y0:g} {span:g} {span:g}"><defs><linearGradient id="oa-bg" x1="0" '
           f'y1="0" x2="0" y2="1"><stop offset="0" stop-color="{bg}"/><stop offset="1" stop-color="{bg2}"/>'
           f'</linearGradient></defs><rect x="{x0:g}" y="{y0:g}" width="{span:g}" height="{span:g}" '
           f'fill="url(#oa-bg)"/><g color="{fg}"{g}>{icon.body}</g></svg>')
    return svg, {"fg": fg, "bg": bg, "padding": round(pad / side, 3)}


def _require_resvg() -> None:
    try:
        import resvg_py  # noqa: F401
    except ImportError:
        raise UserError("resvg-py is not installed: the icon corpus renders SVG with it; "
                        "pip install -e '.[icons]'") from None


def render_png(svg: str) -> bytes:
    """SVG -> RGB PNG bytes (resvg; RGBA flattened: the background rect makes it opaque anyway)."""
    import resvg_py  # the [icons] extra; imported here so the module loads without it

    rgba = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True))))
    buf = io.BytesIO()
    rgba.convert("RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# captions


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _style(icon: Icon) -> str:
    """The trailing style words :func:`concept_of` dropped ("outline", "bold"...)."""
    words = icon.name.lower().replace("_", "-").split("-")
    kept = len(icon.concept.split())
    return " ".join(w for w in words[kept:] if not w.isdigit())


def _case(text: str, rng: random.Random) -> str:
    r = rng.random()
    return text.title() if r < 0.15 else text[:1].upper() + text[1:] if r < 0.5 else text


def noisy_caption(icon: Icon, set_name: str, rng: random.Random) -> str:
    """A web-like caption from the icon's names, aliases, categories and set ("mdi home outline")."""
    c, name, style = icon.concept, icon.name, _style(icon)
    words = name.replace("-", " ").replace("_", " ")
    alias = rng.choice(icon.aliases).replace("-", " ") if icon.aliases else c
    forms = [f"{c} icon", c, f"{icon.set} {words}", f"{name} svg icon - {set_name}", f"{name}.svg",
             f"{alias} icon", f"{c} vector icon", f"free {c} icon", f"{c.title()} Icon | {set_name}",
             f"{c} symbol", f"icon of {_article(c)} {c}", f"{c} icon png", f"{c} clipart",
             f"{set_name} {c}", f"ic_{name.replace('-', '_')}", f"{words} icon", f"{alias} sign"]
    if style:
        forms += [f"{c} icon {style}", f"{style} {c} icon"]
    if icon.categories:
        forms += [f"{rng.choice(icon.categories).lower()} {c} icon"]
    return _case(rng.choice(forms), rng)


def clean_captions(icon: Icon, n: int = 5) -> list[str]:
    """``n`` distinct, correct captions from the names only (no set name, no filler): evaluation text."""
    c = icon.concept
    pool = [f"{_article(c)} {c} icon", f"an icon of {_article(c)} {c}", f"{c} symbol",
            *(f"{a.replace('-', ' ')} icon" for a in icon.aliases if concept_of(a) != c),
            f"a simple {c} pictogram", f"{_article(c)} {c}", f"a drawing of {_article(c)} {c}", f"{c} sign"]
    out: list[str] = []
    for cap in pool:
        if cap.lower() not in {x.lower() for x in out}:
            out.append(cap)
    return out[:n]


JUNK = ["icon", "svg", "image", "untitled", "logo", "vector", "Layer 1", "placeholder", "download", "click here",
        "ic_launcher", "sprite", "asset", "button", "graphic", "no description", "spacer", "symbol"]


def junk_caption(rng: random.Random) -> str:
    """Alt-text that says nothing about the icon, as many real web images have."""
    r = rng.randrange(5)
    if r == 0:
        return f"untitled-{rng.randint(1, 40)}.svg"
    if r == 1:
        return f"Group {rng.randint(2, 999)}"
    if r == 2:
        return f"icon-{rng.randint(1, 999)}.png"
    if r == 3:
        return f"IMG_{rng.randint(1000, 9999)}.PNG"
    return rng.choice(JUNK)


def noise_plan(n: int, noise_rate: float, seed: int) -> list[str]:
    """Exactly round(noise_rate * n) noisy captions at seeded positions, kinds alternating."""
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    plan = ["none"] * n
    for k, i in enumerate(np.random.default_rng([seed, 14]).permutation(n)[: round(noise_rate * n)]):
        plan[int(i)] = NOISE_KINDS[k % len(NOISE_KINDS)]
    return plan


def _rng(seed: int, *parts: object) -> random.Random:
    # string seeds hash with sha512: stable across processes and Python runs
    return random.Random(":".join(["openalign-icons", str(seed), *map(str, parts)]))


# --------------------------------------------------------------------------------------------
# the plan: which sets, which icons go where, which captions are noisy


@dataclass(frozen=True)
class IconsConfig:
    """What :func:`plan_corpus` and :func:`write_corpus` make; ``openalign data icons`` flags."""

    sets: tuple[str, ...] = field(default=DEFAULT_SETS, metadata={
        "help": "Iconify set prefixes fetched with npm as @iconify-json/<prefix> ('all': @iconify/json)"})
    from_dir: str | None = field(default=None, metadata={
        "flag": "--from", "metavar": "DIR", "help": "read icon sets from this folder (icons.json files or npm tarballs); never fetches"})
    cache_dir: str | None = field(default=None, metadata={"metavar": "DIR", "help": "folder for fetched npm tarballs (default: OUT/npm)"})
    image_size: int = field(default=64, metadata={"help": "image side in pixels"})
    variants: int = field(default=1, metadata={"help": "training images per icon (other colours and padding)"})
    max_icons_per_set: int = field(default=0, metadata={"help": "at most this many icons per set (0: all)"})
    noise_rate: float = field(default=0.2, metadata={"help": "fraction of noisy training captions (junk, mismatched)"})
    heldout_sets: tuple[str, ...] = field(default=(), metadata={
        "help": "set prefixes held out of training for the cross-source test (default: --heldout-fraction of the sets)"})
    heldout_fraction: float = field(default=0.2, metadata={"help": "fraction of sets held out when --heldout-sets is empty"})
    num_heldout: int = field(default=0, metadata={
        "help": "at most this many held-out retrieval images, one per set and concept (0: all)"})
    classify_by: str = field(default="category", metadata={
        "choices": CLASSIFY_BY, "help": "zero-shot classes: the sets' categories or the normalised concepts"})
    classify_per_class: int = field(default=50, metadata={"help": "at most this many images per class"})
    classify_min_per_class: int = field(default=5, metadata={"help": "classes with fewer images are left out"})
    shard_size: int = field(default=1000, metadata={"help": "samples per shard"})
    seed: int = 0
    workers: int = field(default=0, metadata={"help": "rendering processes (0: one per CPU)"})


def check_config(cfg: IconsConfig) -> None:
    """One-line errors naming the flag, before anything is read or fetched."""
    if not 0.0 <= cfg.noise_rate <= 1.0:
        raise UserError(f"--noise-rate {cfg.noise_rate}: must be between 0 and 1")
    if not 0.0 <= cfg.heldout_fraction < 1.0:
        raise UserError(f"--heldout-fraction {cfg.heldout_fraction}: must be in [0, 1)")
    if cfg.image_size < 16 or cfg.shard_size < 1 or cfg.variants < 1:
        raise UserError("--image-size must be >= 16, --shard-size and --variants >= 1")
    if min(cfg.max_icons_per_set, cfg.num_heldout, cfg.classify_per_class, cfg.workers) < 0:
        raise UserError("--max-icons-per-set, --num-heldout, --classify-per-class and --workers must be >= 0")
    if cfg.classify_by not in CLASSIFY_BY:
        raise UserError(f"--classify-by {cfg.classify_by!r}: choose one of {', '.join(CLASSIFY_BY)}")
    if not cfg.from_dir and not cfg.sets:
        raise UserError("--sets is empty and no --from given; name Iconify prefixes (e.g. mdi,tabler) or pass --from DIR")


@dataclass
class IconPlan:
    cfg: IconsConfig
    used: list[IconSet]
    skipped_sets: list[dict[str, str]]  # prefix, source, reason
    skipped: Counter  # files and sets left out, by reason
    heldout_sets: list[str]
    train: list[tuple[Icon, int]]  # (icon, variant), shuffled so every shard mixes sets
    noise: list[str]  # one per training item
    heldout: list[Icon]  # one per (held-out set, concept)
    classify: list[tuple[str, Icon]]  # (class name, icon)
    classify_source: str  # "heldout_sets", "all_sets" or "none"

    @property
    def total_images(self) -> int:
        return len(self.train) + len(self.heldout) + len(self.classify)


def _representatives(icons: Iterable[Icon]) -> dict[tuple[str, str], Icon]:
    """One icon per (set, concept): the one without style words ("home" over "home-outline") if any."""
    out: dict[tuple[str, str], Icon] = {}
    for ic in sorted(icons, key=lambda i: (i.set, len(i.name), i.name)):
        out.setdefault((ic.set, ic.concept), ic)
    return out


def choose_heldout(prefixes: list[str], cfg: IconsConfig, skipped_sets: list[dict[str, str]]) -> list[str]:
    if cfg.heldout_sets:
        for p in cfg.heldout_sets:
            if p not in prefixes:
                why = next((f" (skipped: {s['reason']})" for s in skipped_sets if s["prefix"] == p), "")
                raise UserError(f"--heldout-sets {p}: not among the sets used{why}; pick from {', '.join(prefixes)}")
        if set(cfg.heldout_sets) >= set(prefixes):
            raise UserError(f"--heldout-sets {','.join(cfg.heldout_sets)}: holds out every set; leave one to train on")
        return sorted(set(cfg.heldout_sets))
    n = round(cfg.heldout_fraction * len(prefixes))
    if cfg.heldout_fraction > 0 and len(prefixes) >= 2:
        n = min(max(1, n), len(prefixes) - 1)
    return sorted(_rng(cfg.seed, "heldout-sets").sample(sorted(prefixes), n))


def category_class(cat: str) -> str:
    """"Account / User" -> "account or user": class names read as words in a prompt."""
    return re.sub(r"\s+", " ", cat.lower().replace("/", " or ").replace("&", " and ")).strip()


def _classify_items(cfg: IconsConfig, used: list[IconSet], heldout: list[str]) -> tuple[list[tuple[str, Icon]], str]:
    held_icons = [i for s in used if s.prefix in heldout for i in s.icons]
    if cfg.classify_by == "category":
        # single-label only: an icon filed under two categories has no one right answer
        def labelled(icons: list[Icon]) -> list[tuple[str, Icon]]:
            return [(category_class(i.categories[0]), i) for i in _representatives(icons).values()
                    if len({category_class(c) for c in i.categories}) == 1]
        items, source = labelled(held_icons), "heldout_sets"
        if not items:  # no held-out set has categories: fall back to every set (in-distribution)
            items, source = labelled([i for s in used for i in s.icons]), "all_sets"
    else:
        # concepts several sets draw; images (every style variant) from the held-out sets only
        per_concept = Counter(c for s in used for c in {i.concept for i in s.icons})
        items = [(i.concept, i) for i in held_icons if per_concept[i.concept] >= 2]
        source = "heldout_sets"
    by_class: dict[str, list[Icon]] = defaultdict(list)
    for cls, ic in items:
        by_class[cls].append(ic)
    out: list[tuple[str, Icon]] = []
    for cls in sorted(by_class):
        icons = sorted(by_class[cls], key=lambda i: (i.set, i.name))
        if len(icons) < max(1, cfg.classify_min_per_class):
            continue
        if cfg.classify_per_class and len(icons) > cfg.classify_per_class:
            icons = sorted(_rng(cfg.seed, "classify", cls).sample(icons, cfg.classify_per_class),
                           key=lambda i: (i.set, i.name))
        out += [(cls, ic) for ic in icons]
    return out, (source if out else "none")


def plan_corpus(cfg: IconsConfig, source: str | Path, only: Iterable[str] | None = None) -> IconPlan:
    """Read the sets under ``source`` (those named in ``only``, if given), filter licences, split sets, choose noise."""
    check_config(cfg)
    skipped: Counter = Counter()
    used, skipped_sets = [], []
    wanted = set(only) if only is not None else None
    for s in read_sets(source, skipped):
        if wanted is not None and s.prefix not in wanted:
            continue  # another set left in the shared fetch cache
        reason = licence_reason(s) or (None if s.icons else "no_icons")
        if reason:
            skipped[reason] += 1
            skipped_sets.append({"prefix": s.prefix, "source": s.source, "reason": reason})
            continue
        if cfg.max_icons_per_set and len(s.icons) > cfg.max_icons_per_set:
            keep = _rng(cfg.seed, "subset", s.prefix).sample(list(s.icons), cfg.max_icons_per_set)
            s = replace(s, icons=tuple(sorted(keep, key=lambda i: i.name)))
        used.append(s)
    if not used:
        why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "no icon sets found"
        raise UserError(f"{source}: no usable icon set ({why}); allowed licences: {', '.join(ALLOWED_LICENCES)}")
    heldout = choose_heldout([s.prefix for s in used], cfg, skipped_sets)
    train = [(i, v) for s in used if s.prefix not in heldout for i in s.icons for v in range(cfg.variants)]
    _rng(cfg.seed, "shuffle").shuffle(train)
    held = sorted(_representatives(i for s in used if s.prefix in heldout for i in s.icons).values(),
                  key=lambda i: (i.set, i.name))
    if cfg.num_heldout and len(held) > cfg.num_heldout:
        held = sorted(_rng(cfg.seed, "heldout").sample(held, cfg.num_heldout), key=lambda i: (i.set, i.name))
    classify, classify_source = _classify_items(cfg, used, heldout)
    return IconPlan(cfg=cfg, used=used, skipped_sets=skipped_sets, skipped=skipped, heldout_sets=heldout,
                    train=train, noise=noise_plan(len(train), cfg.noise_rate, cfg.seed), heldout=held,
                    classify=classify, classify_source=classify_source)


# --------------------------------------------------------------------------------------------
# writing: training shards, the held-out retrieval split, the classification split

Sample = tuple[str, str, str, dict]  # key, svg, caption, metadata


def train_samples(plan: IconPlan) -> list[Sample]:
    """Every training sample but its pixels: SVG, caption (noisy per the plan) and ``KEY.json`` metadata."""
    sets = {s.prefix: s for s in plan.used}
    out: list[Sample] = []
    for k, ((icon, variant), noise) in enumerate(zip(plan.train, plan.noise)):
        s, key = sets[icon.set], f"{k:09d}"
        rng = _rng(plan.cfg.seed, "train", icon.set, icon.name, variant)
        svg, look = icon_svg(icon, plan.cfg.image_size, rng)
        clean = noisy_caption(icon, s.name, rng)  # "clean": it names this icon, noisy only in the web's way
        meta: dict[str, Any] = {"noise": noise, "noisy": noise != "none"}
        if noise == "junk":
            caption = junk_caption(rng)
        elif noise == "mismatch":
            other = _unrelated(plan.train, icon, rng)
            caption = noisy_caption(other, sets[other.set].name, rng)
            meta.update(caption_from={"set": other.set, "name": other.name, "concept": other.concept})
        else:
            caption = clean
        meta.update(key=key, caption=caption, clean_caption=clean, status="success", width=plan.cfg.image_size,
                    height=plan.cfg.image_size, set=icon.set, set_name=s.name, name=icon.name, concept=icon.concept,
                    aliases=list(icon.aliases), categories=list(icon.categories), variant=variant,
                    licence=s.licence.get("spdx", ""), author=s.author, **look)
        out.append((key, svg, caption, meta))
    return out


def _unrelated(train: list[tuple[Icon, int]], icon: Icon, rng: random.Random) -> Icon:
    """Another training icon of another concept (the icon itself when the corpus has one concept)."""
    for _ in range(100):
        other = train[rng.randrange(len(train))][0]
        if other.concept != icon.concept:
            return other
    return icon


def _write_shard(path: str, samples: list[Sample]) -> int:
    """Render and write one shard atomically (a truncated tar would read as a broken shard)."""
    groups: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
    for key, svg, caption, meta in samples:
        members = [(f"{key}.png", render_png(svg)), (f"{key}.txt", caption.encode("utf-8")),
                   (f"{key}.json", json.dumps(meta).encode("utf-8"))]
        groups[key] = [(_tarinfo(name, len(data)), data) for name, data in members]
    atomic_write_with(path, lambda tmp: write_tar(tmp, groups))
    return len(samples)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # mtime 0: same input, same bytes
    return info


def _write_images(items: list[tuple[str, str]]) -> int:
    for path, svg in items:
        atomic_write_bytes(path, render_png(svg))
    return len(items)


def _run_job(job: tuple[str, Any, Any]) -> int:
    kind, a, b = job
    return _write_shard(a, b) if kind == "shard" else _write_images(a)


def _run_jobs(jobs: list[tuple[str, Any, Any]], workers: int, progress: Callable[[int], None] | None) -> None:
    """All rendering, in one pool ("spawn": no forked copies of the caller's threads or torch state)."""
    if workers == 0:
        import os

        workers = os.cpu_count() or 1
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            n = _run_job(job)
            if progress:
                progress(n)
        return
    with get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        for n in pool.imap_unordered(_run_job, jobs):
            if progress:
                progress(n)


def _heldout_entries(plan: IconPlan, root: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Karpathy ``images`` entries (split "test") and the (path, svg) pairs to render."""
    sets = {s.prefix: s for s in plan.used}
    images, todo, sentid = [], [], 0
    for i, icon in enumerate(plan.heldout):
        svg, look = icon_svg(icon, plan.cfg.image_size, _rng(plan.cfg.seed, "heldout", icon.set, icon.name))
        caps = clean_captions(icon)
        sents = [{"raw": c, "tokens": c.lower().split(), "imgid": i, "sentid": sentid + j} for j, c in enumerate(caps)]
        sentid += len(sents)
        images.append({"filepath": icon.set, "filename": f"{icon.name}.png", "split": "test", "imgid": i,
                       "sentences": sents, "sentids": [s["sentid"] for s in sents], "set": icon.set,
                       "name": icon.name, "concept": icon.concept, "licence": sets[icon.set].licence.get("spdx", ""),
                       "author": sets[icon.set].author, **look})
        todo.append((str(root / "images" / icon.set / f"{icon.name}.png"), svg))
    return images, todo


CLASSIFY_TEMPLATES = ["a {c} icon.", "an icon of {c}.", "a {c} symbol.", "{c} icon", "a pictogram of {c}."]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "class"


def _classify_todo(plan: IconPlan, root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Class names in sorted-folder order (ImageFolder's) and the (path, svg) pairs to render."""
    folders = {cls: _slug(cls) for cls, _ in plan.classify}
    todo = [(str(root / folders[cls] / f"{ic.set}-{ic.name}.png"),
             icon_svg(ic, plan.cfg.image_size, _rng(plan.cfg.seed, "classify", ic.set, ic.name))[0])
            for cls, ic in plan.classify]
    by_folder = {f: c for c, f in folders.items()}
    return [by_folder[f] for f in sorted(by_folder)], todo


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


@dataclass(frozen=True)
class IconCorpusInfo:
    root: Path
    shards: str  # brace pattern of the training shards
    num_train: int
    heldout_json: Path | None
    heldout_image_root: Path
    num_heldout: int
    classify_root: Path | None
    classes: list[str]
    noise_counts: dict[str, int]
    stats: dict[str, Any]


def write_corpus(plan: IconPlan, out: str | Path, progress: Callable[[int], None] | None = None) -> IconCorpusInfo:
    """Write ``out/train/*.tar``, ``out/heldout/`` (Karpathy JSON + images), ``out/classify/`` and ``out/stats.json``."""
    root, cfg = Path(out), plan.cfg
    _require_resvg()
    samples = train_samples(plan)
    shards = [(str(root / "train" / f"{k:05d}.tar"), chunk) for k, chunk in enumerate(_chunks(samples, cfg.shard_size))]
    (root / "train").mkdir(parents=True, exist_ok=True)
    images, held_todo = _heldout_entries(plan, root / "heldout")
    classes, cls_todo = _classify_todo(plan, root / "classify")
    jobs = [("shard", p, s) for p, s in shards] + [("images", c, None) for c in _chunks(held_todo + cls_todo, 200)]
    _run_jobs(jobs, cfg.workers, progress)
    heldout_json = None
    if images:
        heldout_json = root / "heldout" / "karpathy.json"
        atomic_write_text(heldout_json, json.dumps({"images": images, "dataset": "icons"}, indent=1))
    classify_root = None
    if classes:
        classify_root, name = root / "classify", f"icons_{cfg.classify_by}"
        atomic_write_text(classify_root / "classnames.json", json.dumps({name: classes}, indent=1))
        atomic_write_text(classify_root / "templates.json", json.dumps({name: CLASSIFY_TEMPLATES}, indent=1))
    n = len(shards)
    pattern = str(root / "train" / ("00000.tar" if n == 1 else f"{{00000..{n - 1:05d}}}.tar"))
    counts = {"clean": plan.noise.count("none"), **{k: plan.noise.count(k) for k in NOISE_KINDS}}
    stats = _stats(plan, pattern, n, counts, classes)
    atomic_write_text(root / "stats.json", json.dumps(stats, indent=1))
    return IconCorpusInfo(root=root, shards=pattern, num_train=len(samples), heldout_json=heldout_json,
                          heldout_image_root=root / "heldout" / "images", num_heldout=len(images),
                          classify_root=classify_root, classes=classes, noise_counts=counts, stats=stats)


def _stats(plan: IconPlan, pattern: str, num_shards: int, counts: dict[str, int], classes: list[str]) -> dict:
    train_per_set = Counter(i.set for i, _ in plan.train)
    concepts = defaultdict(set)
    for s in plan.used:
        for i in s.icons:
            concepts[i.concept].add(s.prefix)
    sets = [{"prefix": s.prefix, "name": s.name, "author": s.author, "licence": s.licence,
             "licence_basis": ALLOWED_LICENCES[s.licence["spdx"]], "icons": len(s.icons), "hidden_icons": s.hidden,
             "split": "heldout" if s.prefix in plan.heldout_sets else "train", "train_images": train_per_set[s.prefix],
             "source": s.source} for s in plan.used]
    return {"num_train": len(plan.train), "num_shards": num_shards, "shards": pattern, "noise_rate": plan.cfg.noise_rate,
            "noise_counts": counts, "num_heldout": len(plan.heldout), "heldout_sets": plan.heldout_sets,
            "classify_by": plan.cfg.classify_by, "classify_source": plan.classify_source, "classes": classes,
            "num_classify": len(plan.classify), "concepts": len(concepts),
            "concepts_in_several_sets": sum(len(v) > 1 for v in concepts.values()), "sets_used": sets,
            "sets_skipped": plan.skipped_sets, "skipped": dict(sorted(plan.skipped.items())),
            "allowed_licences": ALLOWED_LICENCES, "config": asdict(plan.cfg)}


def build_icon_corpus(out: str | Path, cfg: IconsConfig = IconsConfig(),
                      progress: Callable[[int], None] | None = None) -> IconCorpusInfo:
    """Fetch (unless ``cfg.from_dir``), plan and write in one call."""
    source, only = resolve_source(cfg, out)
    return write_corpus(plan_corpus(cfg, source, only), out, progress)


def resolve_source(cfg: IconsConfig, out: str | Path) -> tuple[str | Path, tuple[str, ...] | None]:
    """(where to read sets, which prefixes to keep): ``--from`` as is, else npm-fetched tarballs of ``--sets``."""
    check_config(cfg)
    if cfg.from_dir:
        return cfg.from_dir, None
    cache = fetch_sets(cfg.sets, cfg.cache_dir or Path(out) / "npm")
    return cache, (None if "all" in cfg.sets else cfg.sets)
