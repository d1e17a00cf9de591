"""Static HTML pages: inspect's feature browser and the demo's report.

Each page is one file that opens from disk: inline CSS, a little vanilla JS, images beside it (the browser's
tiles) or embedded as data URIs (the report's plots). No server, no network, no build step.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from sae_vit.core.atomic import write_text

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:1rem 1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin:.2rem 0}h3{font-size:.95rem;margin:.6rem 0 .3rem;color:#444}
.legend{background:#f4f4f6;border-radius:6px;padding:.6rem .9rem;font-size:.9rem}
.controls{display:flex;gap:1rem;align-items:center;margin:1rem 0;flex-wrap:wrap}
.controls input{padding:.3rem .5rem;min-width:16rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(680px,1fr));gap:1rem}
.feature{border:1px solid #ddd;border-radius:8px;padding:.6rem .8rem}
.feature header{display:flex;gap:1rem;align-items:baseline;flex-wrap:wrap}
.stat{color:#555;font-size:.9rem}.target{background:#e8f0fe;border-radius:4px;padding:0 .4rem}
.tiles{display:flex;flex-wrap:wrap;gap:.5rem}
figure{margin:0}figcaption{font-size:.8rem;color:#333;font-variant-numeric:tabular-nums}
.none{color:#a00;font-size:.9rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.claim{border-left:4px solid #4a6fa5;padding:.2rem 1rem;margin:1.5rem 0}.claim img{max-width:100%}
.paper{color:#555}
"""

BROWSER_JS = """
const grid = document.getElementById('grid'), sort = document.getElementById('sort');
const filter = document.getElementById('filter'), count = document.getElementById('count');
const cards = Array.from(grid.children);
function value(card, key) { const v = parseFloat(card.dataset[key]); return isNaN(v) ? -Infinity : v; }
function apply() {
  const key = sort.value, query = filter.value.trim().toLowerCase();
  cards.sort((a, b) => key === 'feature' ? value(a, key) - value(b, key) : value(b, key) - value(a, key));
  let shown = 0;
  for (const card of cards) {
    grid.appendChild(card);
    card.hidden = query !== '' && !card.dataset.text.includes(query);
    shown += card.hidden ? 0 : 1;
  }
  count.textContent = shown + ' of ' + cards.length + ' features shown';
}
sort.addEventListener('change', apply);
filter.addEventListener('input', apply);
apply();
"""

ROW_NAMES = {"patch": "top images by the maximum over patch tokens", "cls": "top images by the CLS token"}


def page(title: str, body: str, script: str = "", css: str = "") -> str:
    """A whole HTML document with the shared style (plus ``css``) and an optional inline script."""
    js = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}{css}</style></head>"
            f"<body>{body}{js}</body></html>\n")


def _num(x: float, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def density_text(density: float) -> str:
    """A density in percent; a feature that fires at all never reads as 0.00 %."""
    if density == 0:
        return "0 % (dead on these images)"
    return "&lt;0.01 %" if density < 1e-4 else f"{100 * density:.2f} %"


def _legend(tokens: str) -> str:
    read = {"cls": "the CLS token only", "patches": "patch tokens only", "all": "the CLS and all patch tokens"}
    heat = ("" if tokens == "cls" else " Right of each image: the feature's activation on each patch (magma "
            "colormap: black = 0, bright yellow = the largest activation in that row).")
    return (f"<div class=legend><b>How to read this page.</b> The SAE reads {read[tokens]}; density is the share "
            f"of those tokens on which the feature fires, over all scanned images.{heat} The number under a tile "
            "is the activation that ranks it (maximum over patches, or at the CLS token). <i>steers to</i>: "
            "steer-score's top concept and its steerability S = Σ Δp² (steerable when S &gt; 0.10). Text labels: "
            "the words whose text embedding best matches the change of the image embedding when the feature is "
            "pushed (cosine).</div>")


def _tiles_html(name: str, tiles: list[dict]) -> str:
    head = f"<h3>{html.escape(ROW_NAMES.get(name, name))}</h3>"
    if not tiles:
        where = {"patch": "on a patch token", "cls": "at the CLS token"}.get(name, "")
        return head + f"<p class=none>the feature never fires {where} of the scanned images</p>"
    figs = "".join(f"<figure><img src='{html.escape(t['src'])}' alt='image {t['image']}' loading=lazy>"
                   f"<figcaption>#{t['image']} {html.escape(t['id'])} · {t['activation']:.2f}</figcaption></figure>"
                   for t in tiles)
    return head + f"<div class=tiles>{figs}</div>"


def _card(row: dict) -> str:
    labels = ", ".join(f"{html.escape(w)} ({c:.2f})" for w, c in row["labels"]) or "—"
    target = row.get("target")
    steer = (f"<span class=target>steers to <b>{html.escape(target)}</b> (S {_num(row['S'], '.3f')})</span>"
             if target else "<span class=stat>not scored by steer-score</span>")
    text = " ".join([str(row["feature"]), target or "", *(w for w, _ in row["labels"])]).lower()
    data = (f"data-feature='{row['feature']}' data-density='{row['density']:.6g}' "
            f"data-max='{row['max_activation']:.6g}' data-steer='{_num(row['S'], '.6g')}' "
            f"data-text='{html.escape(text)}'")
    rows = "".join(_tiles_html(name, tiles) for name, tiles in row["tiles"].items())
    return (f"<article class=feature {data}><header><h2>feature {row['feature']}</h2>"
            f"<span class=stat>density {density_text(row['density'])}</span>"
            f"<span class=stat>max activation {row['max_activation']:.2f}</span>{steer}</header>"
            f"<p class=stat>text labels: {labels}</p>{rows}</article>")


def write_feature_browser(out: Path, rows: Sequence[dict], title: str, tokens: str) -> Path:
    """``out/index.html``: the features of ``rows`` (see ``inspect._feature_entries``) as a grid sortable by
    density, maximum activation and steerability, with a text filter on feature ids and labels."""
    controls = ("<div class=controls><label>sort by <select id=sort>"
                "<option value=density>density</option><option value=max>max activation</option>"
                "<option value=steer>steerability S</option><option value=feature>feature id</option></select>"
                "</label><label>filter labels <input id=filter type=search placeholder='e.g. red'></label>"
                "<span id=count></span></div>")
    body = (f"<h1>Feature browser</h1><p class=stat>{html.escape(title)}</p>{_legend(tokens)}{controls}"
            f"<div id=grid class=grid>{''.join(_card(r) for r in rows)}</div>")
    return write_text(out / "index.html", page("sae-vit feature browser", body, BROWSER_JS))


def data_uri(path: Path | None) -> str | None:
    """A PNG as a ``data:`` URI (None when there is no file), so a page carries its plots."""
    if path is None or not Path(path).is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_json(obj) -> str:
    """Compact JSON for numbers embedded in a page (NaN written as null)."""
    return json.dumps(obj, default=str).replace("NaN", "null")
