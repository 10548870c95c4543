"""The demo's report: a self-contained HTML page (curves as an embedded PNG, example queries with
thumbnails) and the same numbers as Markdown beside it, with the curves as a PNG file."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import Image

from openalign.io import atomic_write_bytes, atomic_write_text


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def curves_png(metrics_jsonl: Path) -> bytes:
    """Loss and temperature against step, as PNG bytes."""
    import matplotlib  # lazy: pyplot must come after choosing the Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics_jsonl).read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(steps, [r["loss"] for r in rows], color="tab:blue")
    a.set(title="contrastive loss (i2t + t2i)", xlabel="step")
    b.plot(steps, [r["temperature"] for r in rows], color="tab:red")
    b.set(title="temperature", xlabel="step", yscale="log")
    b.axhline(1 / 64, ls="--", color="grey", lw=0.8)
    b.text(steps[0] if steps else 0, 1 / 64, " 1/64 (paper)", va="bottom", fontsize=8, color="grey")
    fig.tight_layout()
    data = _png_bytes(fig)
    plt.close(fig)
    return data


def _thumb(path: Path, size: int = 96) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def zeroshot_lines(summary: dict) -> list[tuple[str, str, str, str]]:
    """(attribute, top-1 %, chance %, what) rows of the zero-shot results, in print order."""
    return [(a, f"{z['top1']:.1f}", f"{z['chance']:.1f}", f"{int(z['num_classes'])} classes, {int(z['num_images'])} images")
            for a, z in summary.get("zeroshot", {}).items()]


def given_other_lines(summary: dict) -> list[tuple[str, str, str, str]]:
    """(attribute, top-1 %, chance %, what) rows of the one-attribute-given accuracies, shape first."""
    g = summary.get("given_other")
    if not g:
        return []
    n = int(g["num_images"])
    return [("shape", f"{g['shape']:.1f}", f"{g['chance_shape']:.1f}", f"colour given; {n} images"),
            ("colour", f"{g['colour']:.1f}", f"{g['chance_colour']:.1f}", f"shape given; {n} images")]


def match_line(hits: list[dict], expected: dict[str, float] | None = None) -> str:
    """'shape 5/5 (colour alone: 2.5), colour 5/5 (shape alone: 1.9)': how many top hits show the
    attribute values the query names, and how many a model knowing only the other attribute would
    show on average (``expected``, see ``demo.expected_hits_knowing_other``)."""
    names = [a for a in ("shape", "colour") if all(a in h.get("match", {}) for h in hits) and hits]
    other = {"shape": "colour", "colour": "shape"}
    return ", ".join(f"{a} {sum(h['match'][a] for h in hits)}/{len(hits)}"
                     + (f" ({other[a]} alone: {expected[a]:.1f})" if expected and a in expected else "")
                     for a in names)


def write_report(path: Path, metrics_jsonl: Path, summary: dict, examples: list, image_root: Path) -> None:
    """``path`` (HTML), and beside it ``<stem>.md`` and ``<stem>-curves.png``; ``examples``: the
    (query, hits, expected hits) triples of ``demo.example_queries``."""
    path = Path(path)
    curves = curves_png(metrics_jsonl)
    atomic_write_bytes(path.with_name(f"{path.stem}-curves.png"), curves)
    atomic_write_text(path, _html(summary, examples, image_root, base64.b64encode(curves).decode()))
    atomic_write_text(path.with_suffix(".md"), _markdown(summary, examples, f"{path.stem}-curves.png"))


def _world(world: dict | None) -> str:
    """One sentence on the scenes and captions the demo drew (its synth settings)."""
    if not world:
        return ""
    parts = []
    if world.get("fix"):
        parts.append("scene attributes held fixed: " + world["fix"].replace(",", ", ").replace("=", " "))
    if world.get("object_scale", 1.0) != 1.0:
        parts.append(f"objects {world['object_scale']:g}x the toy world's size")
    if world.get("colour_mention", 1.0) < 1.0:
        parts.append(f"the colour named in {world['colour_mention']:.0%} of the training captions (the shape in all)")
    if world.get("colour_block"):
        parts.append(f"training images in single-colour runs of {world['colour_block']}")
    return (" Scenes: " + "; ".join(parts) + ".") if parts else " Scenes: the full toy world."


def _intro(summary: dict) -> str:
    m, tr = summary["retrieval"], summary["train"]
    return (f"Trained {tr['steps']} steps x batch {tr['batch_size']} on {sum(summary['noise_counts'].values())} "
            f"synthetic pairs ({summary['noise_counts']}); final temperature {tr['temperature']:.4f}. Evaluated on "
            f"{int(m['num_images'])} clean held-out images whose colour+shape combinations never occur in training."
            + _world(summary.get("world")))


GIVEN_NOTE = ("Each held-out image (colour c, shape s; a combination never seen in training) ranks the captions "
              "'a c s2' of all eight shapes s2 with its own colour c, as the example query pairs do ('a green diamond' "
              "vs 'a green triangle'); right when 'a c s' wins. A model that knows only colour scores chance here "
              "however well it knows colour. The colour row is the same with the shape given.")

EX_NOTE = ("'shape 2/5 (colour alone: 2.4)': 2 of the top 5 show the named shape; a model that knows only colour, "
           "ranking the held-out images of the named colour at random, would show 2.4 on average.")

ZS_NOTE = ("Zero-shot: each class's prompts (e.g. 'a photo of a {c}.') embedded and averaged; images of held-out "
           "colour+shape combinations (a class no held-out combination uses is drawn with held-out values of the "
           "other attribute). The prompts name one attribute only, while every training caption names a colour and a "
           "shape, so this asks more of the text tower than the table above: a shape prompt carries the colours the "
           "shape was seen with in training, which are exactly not the held-out ones, and can land below chance.")


def _html(summary: dict, examples: list, image_root: Path, curves_b64: str) -> str:
    m, ch = summary["retrieval"], summary["chance_text_to_image"]
    rows = "".join(
        f"<tr><td>{n}</td>" + "".join(f"<td>{m[f'{k}_R@{r}']:.1f}</td>" for r in (1, 5, 10)) + "</tr>"
        for n, k in (("image &rarr; text", "image_to_text"), ("text &rarr; image", "text_to_image")))
    rows += "<tr class=chance><td>chance (text &rarr; image)</td>" + "".join(
        f"<td>{ch[f'text_to_image_R@{r}']:.1f}</td>" for r in (1, 5, 10)) + "</tr>"
    zs = "".join(f"<tr><td>{a}</td><td>{t}</td><td class=chance>{c}</td><td>{w}</td></tr>"
                 for a, t, c, w in zeroshot_lines(summary))
    given = "".join(f"<tr><td>{a}</td><td>{t}</td><td class=chance>{c}</td><td>{w}</td></tr>"
                    for a, t, c, w in given_other_lines(summary))
    given_html = ("<h2>Shape with the colour given, on held-out combinations (top-1, %)</h2>"
                  "<table><tr><th>attribute</th><th>accuracy</th><th>chance</th><th></th></tr>"
                  f"{given}</table><p><small>{html.escape(GIVEN_NOTE)}</small></p>") if given else ""
    ex_html = ""
    for q, hits, expected in examples:
        cells = "".join(
            f"<figure><img src='data:image/jpeg;base64,{_thumb(Path(image_root) / h['file'])}'>"
            f"<figcaption>{h['score']:.3f}<br><small>{html.escape(h['caption'])}</small></figcaption></figure>"
            for h in hits)
        matches = match_line(hits, expected)
        ex_html += (f"<h3>&ldquo;{html.escape(q)}&rdquo;</h3>"
                    + (f"<p class=match>top {len(hits)} showing the named {html.escape(matches)}</p>" if matches else "")
                    + f"<div class=grid>{cells}</div>")
    return f"""<!doctype html><html><head><meta charset=utf-8><title>OpenALIGN demo report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}.chance{{color:#888}}.grid{{display:flex;gap:8px}}.match{{color:#555;margin:0}}
figure{{margin:0;width:120px;font-size:12px}}figure img{{width:96px;height:96px;image-rendering:pixelated}}</style>
</head><body><h1>OpenALIGN demo</h1>
<p>{html.escape(_intro(summary))}</p>
<h2>Retrieval (R@K, %)</h2><table><tr><th></th><th>R@1</th><th>R@5</th><th>R@10</th></tr>{rows}</table>
{given_html}
<h2>Zero-shot classification on held-out combinations (top-1, %)</h2>
<table><tr><th>attribute</th><th>accuracy</th><th>chance</th><th></th></tr>{zs}</table>
<p><small>{html.escape(ZS_NOTE)}</small></p>
<h2>Training curves</h2><img src='data:image/png;base64,{curves_b64}'>
<h2>Example text queries (top 5 held-out images, cosine score)</h2>
<p><small>{html.escape(EX_NOTE)}</small></p>{ex_html}
</body></html>"""


def _markdown(summary: dict, examples: list, curves_file: str) -> str:
    m, ch = summary["retrieval"], summary["chance_text_to_image"]
    lines = ["# OpenALIGN demo", "", _intro(summary), "", "## Retrieval (R@K, %)", "",
             "| | R@1 | R@5 | R@10 |", "|---|---:|---:|---:|"]
    for n, k in (("image -> text", "image_to_text"), ("text -> image", "text_to_image")):
        lines.append(f"| {n} | " + " | ".join(f"{m[f'{k}_R@{r}']:.1f}" for r in (1, 5, 10)) + " |")
    lines.append("| chance (text -> image) | " + " | ".join(f"{ch[f'text_to_image_R@{r}']:.1f}" for r in (1, 5, 10)) + " |")
    given = given_other_lines(summary)
    if given:
        lines += ["", "## Shape with the colour given, on held-out combinations (top-1, %)", "",
                  "| attribute | accuracy | chance | |", "|---|---:|---:|---|"]
        lines += [f"| {a} | {t} | {c} | {w} |" for a, t, c, w in given] + ["", GIVEN_NOTE]
    lines += ["", "## Zero-shot classification on held-out combinations (top-1, %)", "",
              "| attribute | accuracy | chance | |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {t} | {c} | {w} |" for a, t, c, w in zeroshot_lines(summary)]
    lines += ["", ZS_NOTE, "", "## Training curves", "", f"![loss and temperature]({curves_file})", "",
              "## Example text queries (top 5 held-out images)", "", EX_NOTE, ""]
    for q, hits, expected in examples:
        matches = match_line(hits, expected)
        lines.append(f"- \"{q}\"" + (f" (top {len(hits)} showing the named {matches})" if matches else "") + ": "
                     + ", ".join(f"{h['file']} ({' '.join(h.get('attributes', {}).get(a, '?') for a in ('colour', 'shape'))})"
                                 for h in hits))
    return "\n".join(lines) + "\n"
