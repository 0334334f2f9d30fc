"""A finding: one problem, with every image it involves; the JSON form other tools read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: every issue name, in the order findings are listed (other tools read these names: keep them)
ISSUES = ("unreadable", "conflicting_labels", "leak", "duplicate", "near_duplicate", "label", "outlier")


@dataclass
class Finding:
    issue: str
    paths: list[str]
    labels: list[str]
    score: float  # higher = more likely a real problem; comparable within one issue
    suggested_label: str | None = None
    members: list[int] = field(default_factory=list)  # indices into the scan (none for unreadable files)

    def to_json(self) -> dict[str, Any]:
        return {
            "issue": self.issue,
            "paths": list(self.paths),
            "labels": list(self.labels),
            "score": round(float(self.score), 4),
            "suggested_label": self.suggested_label,
        }


@dataclass
class DoctorResult:
    summary: dict[str, Any]
    findings: list[Finding]
    out: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """`{"summary": {...}, "findings": [{"issue", "paths", "labels", "score", "suggested_label"}, ...]}`."""
        return {"summary": self.summary, "findings": [f.to_json() for f in self.findings]}


def ordered(findings: list[Finding]) -> list[Finding]:
    """By issue (ISSUES order), then highest score first."""
    return sorted(findings, key=lambda f: (ISSUES.index(f.issue), -f.score, f.paths))


def label_texts(labels: np.ndarray, class_names: list[str], mask_target: bool) -> list[str]:
    """Each image's label as text: its class, its labels joined by ';' (multi-label), '' for a mask."""
    if mask_target:
        return [""] * len(labels)
    if labels.ndim == 2:
        return [";".join(n for n, on in zip(class_names, row) if on > 0) for row in labels]
    return [class_names[int(y)] for y in labels]
