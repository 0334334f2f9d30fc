"""doctor's index.html: one self-contained page (thumbnails inline, inline style, no scripts, nothing fetched)."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np

from tlkit.diagnosis.findings import ISSUES, DoctorResult, Finding
from tlkit.diagnosis.labels import unit_rows
from tlkit.diagnosis.passes import Scanned

MAX_SHOWN = 60  # findings drawn per issue (all of them are in findings.csv)
THUMB = 112
NEAREST = 3  # nearest images shown from the given and the suggested class

STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}h2{margin-top:1.6em}"
    ".f{border:1px solid #ccc;border-radius:6px;padding:.5em;margin:.5em 0;display:flex;gap:.6em;flex-wrap:wrap;align-items:flex-start}"
    "figure{margin:0;width:" + str(THUMB + 8) + "px;font-size:11px;word-break:break-all}"
    "img{display:block;max-width:" + str(THUMB) + "px;max-height:" + str(THUMB) + "px}"
    ".meta{width:100%;font-size:13px}.grp{border-left:3px solid #999;padding-left:.4em;display:flex;gap:.4em}"
    "pre{background:#f6f6f6;padding:.6em;overflow:auto}"
)


def _thumbnail(path: str, cache: dict[str, str]) -> str:
    """A small inline JPEG of the image at `path` ('' when it cannot be read: unreadable files, TFDS ids).

    Pillow, not the TensorFlow decoder: a few hundred eager TF calls cost seconds on a busy machine.
    """
    if path in cache:
        return cache[path]
    from PIL import Image

    cache[path] = ""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB, THUMB))  # JPEG: decode at a reduced scale
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a preview is optional; the path is printed either way
        return ""
    cache[path] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return cache[path]


def _figure(path: str, caption: str, cache: dict[str, str]) -> str:
    src = _thumbnail(path, cache)
    img = f'<img src="{src}" alt="">' if src else "<div>(no preview)</div>"
    return f"<figure>{img}<figcaption>{html.escape(caption)}<br>{html.escape(path)}</figcaption></figure>"


def _nearest_of(scan: Scanned, unit: np.ndarray, i: int, label: int) -> list[int]:
    members = np.flatnonzero((scan.labels == label) & (np.arange(scan.size) != i))
    if not len(members):
        return []
    sims = unit[members] @ unit[i]
    return [int(members[j]) for j in np.argsort(-sims)[:NEAREST]]


def _label_block(f: Finding, scan: Scanned, unit: np.ndarray, class_names: list[str], cache: dict[str, str]) -> str:
    i = f.members[0]
    given = int(scan.labels[i])
    parts = [_figure(f.paths[0], f"given {f.labels[0]}, suggested {f.suggested_label}", cache)]
    for name in (class_names[given], f.suggested_label):
        near = _nearest_of(scan, unit, i, class_names.index(name)) if name in class_names else []
        figs = "".join(_figure(scan.paths[j], f"nearest {name}", cache) for j in near)
        parts.append(f'<div class="grp">{figs}</div>')
    return "".join(parts)


def _finding_block(f: Finding, scan: Scanned, unit: np.ndarray | None, class_names: list[str], cache: dict[str, str]) -> str:
    meta = f'<div class="meta"><b>{f.issue}</b> score {f.score:.3f}'
    meta += f", suggested <b>{html.escape(f.suggested_label)}</b>" if f.suggested_label else ""
    if f.issue == "label" and unit is not None and f.members:
        body = _label_block(f, scan, unit, class_names, cache)
    else:
        body = "".join(_figure(p, f"[{l}] {scan.splits[m]}" if f.members else l, cache)
                       for p, l, m in zip(f.paths, f.labels, f.members or [0] * len(f.paths)))
    return f'<div class="f">{meta}</div>{body}</div>'


def render_page(result: DoctorResult, scan: Scanned, class_names: list[str]) -> str:
    cache: dict[str, str] = {}
    unit = unit_rows(scan.features) if scan.size else None
    reasons = {u["path"]: u["reason"] for u in result.summary.get("unreadable", [])}
    body = [f"<h1>tlkit doctor</h1><p>{html.escape(str(result.summary.get('data', '')))}</p>"]
    body.append("<pre>" + html.escape(json.dumps({k: v for k, v in result.summary.items() if k != 'unreadable'}, indent=2)) + "</pre>")
    for issue in ISSUES:
        found = [f for f in result.findings if f.issue == issue]
        if not found:
            continue
        more = f" (the first {MAX_SHOWN}; all in findings.csv)" if len(found) > MAX_SHOWN else ""
        body.append(f"<h2>{issue}: {len(found)}{more}</h2>")
        for f in found[:MAX_SHOWN]:
            if issue == "unreadable":
                body.append(f'<div class="f"><div class="meta">{html.escape(f.paths[0])}: '
                            f"{html.escape(reasons.get(f.paths[0], ''))}</div></div>")
            else:
                body.append(_finding_block(f, scan, unit, class_names, cache))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tlkit doctor</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
