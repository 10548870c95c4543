"""A small self-contained HTML report: curves (matplotlib PNG) and example queries with thumbnails."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import Image

from openalign.io import atomic_write_text


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def curves_png(metrics_jsonl: Path) -> str:
    import matplotlib  # lazy: pyplot must come after choosing the Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics_jsonl).read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(steps, [r["loss"] for r in rows], color="tab:blue")
    a.set(title="contrastive loss (i2t + t2i)", xlabel="step")
    b.plot(steps, [r["temperature"] for r in rows], color="tab:red")
    b.set(title="learned temperature", xlabel="step", yscale="log")
    b.axhline(1 / 64, ls="--", color="grey", lw=0.8)
    b.text(steps[0] if steps else 0, 1 / 64, " 1/64 (paper)", va="bottom", fontsize=8, color="grey")
    fig.tight_layout()
    data = _png_b64(fig)
    plt.close(fig)
    return data


def _thumb(path: Path, size: int = 96) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(path: Path, metrics_jsonl: Path, summary: dict, examples: list, image_root: Path) -> None:
    m, ch = summary["retrieval"], summary["chance_text_to_image"]
    rows = "".join(
        f"<tr><td>{n}</td>" + "".join(f"<td>{m[f'{k}_R@{r}']:.1f}</td>" for r in (1, 5, 10)) + "</tr>"
        for n, k in (("image &rarr; text", "image_to_text"), ("text &rarr; image", "text_to_image")))
    rows += "<tr class=chance><td>chance (text &rarr; image)</td>" + "".join(
        f"<td>{ch[f'text_to_image_R@{r}']:.1f}</td>" for r in (1, 5, 10)) + "</tr>"
    ex_html = ""
    for q, hits in examples:
        cells = "".join(
            f"<figure><img src='data:image/jpeg;base64,{_thumb(Path(image_root) / h['file'])}'>"
            f"<figcaption>{h['score']:.3f}<br><small>{html.escape(h['caption'])}</small></figcaption></figure>"
            for h in hits)
        ex_html += f"<h3>&ldquo;{html.escape(q)}&rdquo;</h3><div class=grid>{cells}</div>"
    tr = summary["train"]
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>OpenALIGN demo report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}.chance{{color:#888}}.grid{{display:flex;gap:8px}}
figure{{margin:0;width:120px;font-size:12px}}figure img{{width:96px;height:96px;image-rendering:pixelated}}</style>
</head><body><h1>OpenALIGN demo</h1>
<p>Trained {tr['steps']} steps &times; batch {tr['batch_size']} on {sum(summary['noise_counts'].values())} synthetic
pairs ({summary['noise_counts']}); final temperature {tr['temperature']:.4f}. Evaluated on
{int(m['num_images'])} clean held-out images whose colour+shape combinations never occur in training.</p>
<h2>Retrieval (R@K, %)</h2><table><tr><th></th><th>R@1</th><th>R@5</th><th>R@10</th></tr>{rows}</table>
<h2>Training curves</h2><img src='data:image/png;base64,{curves_png(metrics_jsonl)}'>
<h2>Example text queries (top 5 held-out images, cosine score)</h2>{ex_html}
</body></html>"""
    atomic_write_text(path, page)
