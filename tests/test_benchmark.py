"""`tlkit benchmark`: one row per format and quantization, the task's metric, agreement with float, timings."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytest.importorskip("ai_edge_litert", reason="needs the export extra: pip install 'tlkit[export]'")

ROW_KEYS = {"format", "quantize", "size_bytes", "agreement", "p50_ms", "p95_ms", "images_per_second"}


def test_a_run_gives_the_keras_row_and_one_per_export(tiny_run, tmp_path):
    import tlkit

    rows = tlkit.benchmark([tiny_run], formats=["tflite:none,tflite:int8"], single=5, out=tmp_path / "exports")
    assert [(r["format"], r["quantize"]) for r in rows] == [("keras", "none"), ("tflite", "none"), ("tflite", "int8")]
    for row in rows:
        assert ROW_KEYS <= set(row) and row["metric"] == "accuracy"  # the task registry's headline metric
        assert row["size_bytes"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"] and row["images_per_second"] > 0
    keras, fp32, int8 = rows
    assert keras["accuracy"] == pytest.approx(tlkit.evaluate(tiny_run, split="val")["accuracy"])
    assert keras["agreement"] == 1.0 and fp32["agreement"] == 1.0 and fp32["accuracy"] == keras["accuracy"]
    assert int8["size_bytes"] < fp32["size_bytes"] and 0.5 <= int8["agreement"] <= 1.0
    assert (int8["accuracy"] < keras["accuracy"] - 0.01) == ("warning" in int8)
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["run-tflite-int8", "run-tflite-none"]


def test_exports_alone_and_the_cli(tiny_run, tmp_path):
    import tlkit

    folder = tlkit.export(tiny_run, out=tmp_path / "fp16", format="tflite", quantize="float16", quiet=True)
    proc = run_cli("benchmark", str(folder / "model.tflite"), "--json", "--single", "3")
    (row,) = json.loads(proc.stdout)
    assert (row["format"], row["quantize"], row["agreement"]) == ("tflite", "float16", None)  # no float row to agree with
    with pytest.raises(tlkit.TlkitError, match="int4"):
        tlkit.benchmark([tiny_run], formats=["tflite:int4"])


def test_the_table_flags_a_quantized_row_that_loses_more_than_a_point():
    from tlkit.benchmarking import format_table

    base = {"metric": "accuracy", "size_bytes": 1000, "p50_ms": 1.0, "p95_ms": 2.0, "images_per_second": 100.0}
    rows = [{**base, "format": "keras", "quantize": "none", "accuracy": 0.80, "agreement": 1.0},
            {**base, "format": "tflite", "quantize": "int8", "accuracy": 0.78, "agreement": 0.9,
             "warning": "loses 2.0 points of accuracy against keras none"}]
    text = format_table(rows)
    assert "| tflite | int8 | 1 kB | 0.7800 | 90.00% |" in text
    assert "warning: tflite int8 loses 2.0 points" in text
