"""What doctor writes: the terminal summary, and with --out: index.html, findings.csv and exclude.txt."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from tlkit import runs
from tlkit.diagnosis.findings import ISSUES, DoctorResult, Finding
from tlkit.diagnosis.passes import Scanned

INDEX, CSV, EXCLUDE = "index.html", "findings.csv", "exclude.txt"
#: what exclude.txt leaves out: every path of these findings ...
EXCLUDE_ALL = ("unreadable", "conflicting_labels", "label", "outlier")
#: ... and every copy but one of these (for a leak, the copy kept is a training one)
EXCLUDE_COPIES = ("duplicate", "leak")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def summary_lines(result: DoctorResult, top: int = 5) -> list[str]:
    """The short terminal summary: facts, counts per issue, the first findings of each."""
    s = result.summary
    lines = [f"tlkit doctor: {s['data']}", f"  images    {s['images']} ({', '.join(f'{k} {v}' for k, v in s['splits'].items())})"]
    if s.get("classes"):
        lines.append("  classes   " + ", ".join(f"{k} {v}" for k, v in s["classes"].items()) + f" (imbalance {s['imbalance']})")
    sizes = s.get("image_sizes") or {}
    if sizes:
        common = ", ".join(f"{k} ({v})" for k, v in list(sizes["most_common_sizes"].items())[:3])
        lines.append(f"  sizes     {sizes['distinct_sizes']} distinct, most common {common}; aspect "
                     f"{sizes['aspect_ratio']['min']}-{sizes['aspect_ratio']['max']}")
    if s.get("modes"):
        lines.append("  modes     " + ", ".join(f"{k} {v}" for k, v in s["modes"].items()))
    if "auto_input_size" in s:
        lines.append(f"  input     automatic choice {s['auto_input_size_reason']}")
    if s.get("masks"):
        m = s["masks"]
        lines.append(f"  masks     pixel shares {m.get('pixel_shares', m['values'])}; empty {m['empty_masks']['count']}, "
                     f"size mismatches {m['size_mismatches']['count']}, unexpected values {m['unexpected_values']['values']}")
    lines.append(f"  features  {s['features']}")
    counts = ", ".join(f"{issue} {s['findings'][issue]}" for issue in ISSUES)
    lines.append(f"  findings  {counts}")
    for issue in ISSUES:
        shown = [f for f in result.findings if f.issue == issue][:top]
        for f in shown:
            extra = f" -> {f.suggested_label}" if f.suggested_label else ""
            pairs = ", ".join(f"{p} [{l}]" if l else p for p, l in zip(f.paths[:3], f.labels[:3]))
            more = f" (+{len(f.paths) - 3})" if len(f.paths) > 3 else ""
            lines.append(f"  {issue:<18} {f.score:.3f}  {pairs}{more}{extra}")
    return lines


def exclude_ids(findings: list[Finding], scan: Scanned) -> list[str]:
    """exclude.txt's entries (absolute paths, or SPLIT/INDEX): see EXCLUDE_ALL and EXCLUDE_COPIES."""
    chosen: dict[str, None] = {}
    for f in findings:
        if f.issue == "unreadable":
            chosen.update({os.path.normpath(os.path.abspath(p)): None for p in f.paths})
        elif f.issue in EXCLUDE_ALL:
            chosen.update({scan.ids[i]: None for i in f.members})
        elif f.issue in EXCLUDE_COPIES:
            keep = min(f.members, key=lambda i: (_SPLIT_ORDER.get(str(scan.splits[i]), 3), i))
            chosen.update({scan.ids[i]: None for i in f.members if i != keep})
    return list(chosen)


def findings_csv(findings: list[Finding]) -> str:
    """One row per image of each finding: finding number, issue, score, path, label, suggested label."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["finding", "issue", "score", "path", "label", "suggested_label"])
    for n, f in enumerate(findings, 1):
        for path, label in zip(f.paths, f.labels):
            writer.writerow([n, f.issue, f"{f.score:.4f}", path, label, f.suggested_label or ""])
    return buf.getvalue()


def write_outputs(out: str | Path, result: DoctorResult, scan: Scanned, class_names: list[str]) -> Path:
    """index.html, findings.csv and exclude.txt in `out`, each written under a temporary name and renamed."""
    from tlkit.diagnosis.page import render_page

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    entries = exclude_ids(result.findings, scan)
    header = "# written by tlkit doctor: use as data.exclude (one path a line)\n"
    runs.atomic_write_text(folder / CSV, findings_csv(result.findings))
    runs.atomic_write_text(folder / EXCLUDE, header + "".join(e + "\n" for e in entries))
    runs.atomic_write_text(folder / INDEX, render_page(result, scan, class_names))
    return folder

