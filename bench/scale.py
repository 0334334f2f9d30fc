"""How tlkit's cost grows with the data: generated photo folders of 1k, 4k, 16k JPEGs (1024x768).

For each size it measures, in this one script run (the machine may be busy, so
every figure is also given as a ratio to a baseline measured right beside it):

* D: one plain tf.data pass that reads, decodes and resizes every file once
  (`tf.io.decode_jpeg` + `tf.image.resize`, what a user would write), and D8,
  the same pass decoding at the JPEG scale tlkit picks (how much is the scale);
* tlkit finetune, first run (nothing remembered) and second run (verdicts
  remembered), each in a fresh process: wall time beyond the fixed start-up
  (the same run on a 40-image folder), time to the first training step, epoch
  time, peak RSS, decoded-image cache on disk;
* the in-memory image cache is limited to 24 MB here (2000 images at 64 px;
  tlkit's default is 2 GiB) so that the larger folders cross it: beyond it the
  decoded images stay on disk and memory should stay flat;
* two local workers (TF_CONFIG on 127.0.0.1, as `tlkit local-workers 2` starts
  them), first and second run: wall time against one process, and each
  worker's decode time (its share of the scan) against one process's.

With ``--reps N`` every figure is taken N times, D and each checkout's fixed
start-up again each time right beside its runs, the checkouts taking turns
(their order alternating); the summary gives the median and range of each
ratio. On 2 shared cores one repetition can be 0.2 D off.

    python bench/scale.py                      # 1000 4000 16000 images
    python bench/scale.py --sizes 1000 --baseline /work/main   # also time another checkout (e.g. before)
    python bench/scale.py --sizes 4000 --reps 3 --workers-at   # medians of 3, no workers

Generated folders live in a temporary folder and are deleted at the end. Each
class folder cycles through a few dozen distinct generated photos (decoding
cost does not depend on the bytes being unique; generating 16k distinct JPEGs
would take longer than the benchmark).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4
DISTINCT = 24  # distinct photos per class
INPUT = 64  # the tiny model's input size
BATCH = 64
BUDGET = 24 * 1024**2  # the in-memory cache budget in these runs (default 2 GiB): 2000 images at 64 px

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    start = time.perf_counter()
    import tlkit.cli  # what the `tlkit` command sets up before TensorFlow's import (its hooks)
    import keras
    import tlkit
    from tlkit.train import run as run_module

    marks = {}

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            marks.setdefault("first_step", time.perf_counter() - start)
            marks.setdefault("first_step_cpu", time.process_time())

    def folder_bytes(path):
        total = 0
        for root, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    original_callbacks = run_module.FineTuneRun._callbacks
    run_module.FineTuneRun._callbacks = lambda self, *a: original_callbacks(self, *a) + [FirstStep()]
    original_stage = run_module.FineTuneRun.run_stage

    def run_stage(self, index, stage):
        original_stage(self, index, stage)
        try:
            from tlkit.data.scan import current_options
            keep = current_options().keep_dir
        except ImportError:  # a checkout from before the scan module
            keep = None
        try:  # the decoded copies kept between runs
            from tlkit.data.decoded import cache_home
            store = cache_home() / "decoded"
        except ImportError:  # a checkout from before the store
            store = None
        marks["cache_bytes"] = folder_bytes(self.cache) + sum(folder_bytes(d) for d in (keep, store) if d)

    run_module.FineTuneRun.run_stage = run_stage
    from tlkit.data import pipeline
    pipeline.CACHE_BUDGET_BYTES = int(os.environ["BENCH_CACHE_BUDGET"])  # small, so the sizes here cross it
    recipe, run_dir = sys.argv[1], sys.argv[2]
    t = time.perf_counter()
    result = tlkit.finetune(recipe, run_dir=run_dir, quiet=True, export=False, report=False)
    stage = result.stages[0] if result.stages else {}
    print("RESULT " + json.dumps({
        "wall": time.perf_counter() - start,
        "cpu": time.process_time(),
        "first_step": marks.get("first_step"),
        "first_step_cpu": marks.get("first_step_cpu"),
        "epoch": stage.get("seconds"),
        "cache_bytes": marks.get("cache_bytes", 0),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }), flush=True)
    try:
        from tlkit import lingering
    except ImportError:  # a --baseline checkout from before it
        pass
    else:
        lingering.skip_teardown(0)  # as the command line ends a worker (what it holds is not torn down)
    """
)


def photo(rng: np.random.Generator, w: int = 1024, h: int = 768) -> bytes:
    """A photo-like JPEG: smooth colour fields, blobs and sensor noise (about 150 kB at quality 85)."""
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / rng.uniform(50, 200) + rng.uniform(0, 6)),
            128 + 100 * np.cos(y / rng.uniform(50, 200)),
            128 + 60 * np.sin((x + y) / rng.uniform(80, 300)),
        ],
        -1,
    )
    blobs = rng.normal(0, 40, (h // 16, w // 16, 3))
    blobs = np.asarray(Image.fromarray(np.clip(blobs + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32) - 128
    img = np.clip(base + blobs + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def make_folder(root: Path, n: int, pool: list[list[bytes]]) -> Path:
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        (root / f"class{c}" / f"img{i:06d}.jpg").write_bytes(pool[c][(i // CLASSES) % len(pool[c])])
    return root


def plain_pass(folder: Path, ratio: int = 1) -> dict:
    """Wall and CPU seconds of one tf.data pass: read, decode (at `ratio`), resize to INPUT, for every file."""
    code = textwrap.dedent(
        f"""
        import glob, time, tensorflow as tf
        files = sorted(glob.glob({str(folder)!r} + "/*/*.jpg"))
        def load(p):
            image = tf.io.decode_jpeg(tf.io.read_file(p), channels=3, ratio={ratio})
            return tf.cast(tf.image.resize(image, ({INPUT}, {INPUT})), tf.uint8)
        ds = tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch({BATCH})
        for _ in ds.take(1): pass   # start-up (tracing, threads) is not part of D
        t, c = time.perf_counter(), time.process_time()
        it = iter(ds)
        for _ in it: pass
        print("SECONDS", time.perf_counter() - t, time.process_time() - c)
        # timed before the iterator goes: dropping an autotuned tf.data iterator can wait out the
        # autotuning thread's sleep (seconds; see README "Epoch boundaries without a wait"), not decode time
        del it
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(None), check=True)
    wall, cpu = out.stdout.split("SECONDS")[-1].split()
    return {"wall": float(wall), "cpu": float(cpu)}


def _env(pythonpath: str | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def recipe_file(work: Path, folder: Path, name: str, batch: int = BATCH) -> Path:
    import yaml

    recipe = {
        "name": name,
        "seed": 1,
        "data": {"source": str(folder), "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"backbone": "scratch", "weights": "none", "input_size": INPUT, "blocks": [{"filters": 8}, {"filters": 16}]},
        "train": {"batch_size": batch, "stages": [{"name": "train", "epochs": 1, "learning_rate": 0.003}]},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def finetune(recipe: Path, run_dir: Path, cache: Path, pythonpath: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(recipe), str(run_dir)],
        capture_output=True, text=True, env=_env(pythonpath, TLKIT_CACHE_DIR=str(cache), BENCH_CACHE_BUDGET=str(BUDGET)),
    )
    if out.returncode != 0:
        raise SystemExit(f"finetune failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return json.loads(out.stdout.split("RESULT ")[-1])


def two_workers(recipe: Path, run_dir: Path, cache: Path, pythonpath: str | None) -> list[dict]:
    """Two worker processes of one cluster on 127.0.0.1 (what `tlkit local-workers 2` starts)."""
    sys.path.insert(0, str(ROOT))
    from tlkit.workers import local_cluster

    configs = local_cluster(2)
    override = recipe.with_name(recipe.stem + "-mw.yaml")
    override.write_text(recipe.read_text().replace("batch_size: 64", f"batch_size: {BATCH // 2}") + "runtime:\n  strategy: multi_worker\n")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(override), str(run_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(pythonpath, TLKIT_CACHE_DIR=str(cache), TF_CONFIG=json.dumps(config), BENCH_CACHE_BUDGET=str(BUDGET)),
        )
        for config in configs
    ]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed:\n{out[-3000:]}\n{err[-3000:]}")
        results.append(json.loads(out.split("RESULT ")[-1]))
    shutil.rmtree(run_dir, ignore_errors=True)
    return results


def scan_seconds(folder: Path, cache: Path, workers: int, pythonpath: str | None) -> list[dict]:
    """Each worker's decode for the first scan of the folder (its shard, at the model size): wall and CPU seconds."""
    code = textwrap.dedent(
        f"""
        import sys, time, numpy as np, glob
        from tlkit.data.scan import scan_images, scan_options
        paths = sorted(glob.glob({str(folder)!r} + "/*/*.jpg"))
        index = int(sys.argv[1])
        # each worker's part timed alone: the sum stands in for the other workers, who find their files good
        def others_good(rows):
            return rows if rows.shape[1] == 1 else np.where(rows[:, :1] == 0, np.array([[1, 0, 0]]), rows)
        with scan_options({INPUT}, remember=False, workers={workers}, index=index, all_sum=others_good):
            scan_images(paths[:8], progress=False)  # start-up (tracing) is not part of the decode
            t, c = time.perf_counter(), time.process_time()
            result = scan_images(paths, progress=False)
            print("SECONDS", time.perf_counter() - t, time.process_time() - c, result.checked)
        """
    )
    times = []
    for index in range(workers):
        out = subprocess.run([sys.executable, "-c", code, str(index)], capture_output=True, text=True,
                             env=_env(pythonpath, TLKIT_CACHE_DIR=str(cache)), check=True)
        wall, cpu, checked = out.stdout.split("SECONDS")[-1].split()
        times.append({"wall": float(wall), "cpu": float(cpu), "checked": int(checked)})
    return times


def one_rep(n: int, folder: Path, work: Path, tiny: Path, D: dict, label: str, pythonpath: str | None, rep: int,
            workers: bool, scans: bool) -> dict:
    """One repetition for one checkout: its fixed start-up, first and second run, two workers, as ratios to D."""
    row: dict = {"D": D, "startup": {}}
    tiny_recipe = recipe_file(work, tiny, f"tiny-{label}", batch=8)
    tiny_cache = work / f"tiny-cache-{label}-{rep}"
    for run in ("first", "second"):
        row["startup"][run] = finetune(tiny_recipe, work / "run", tiny_cache, pythonpath)
    recipe = recipe_file(work, folder, f"scale{n}")
    cache = work / f"cache{n}-{label}-{rep}"  # per checkout and repetition: one must not find another's verdicts
    for run in ("first", "second"):
        r = finetune(recipe, work / "run", cache, pythonpath)
        row[run] = r
        for clock in ("wall", "cpu"):
            row[f"{run}_D_{clock}"] = (r[clock] - row["startup"][run][clock]) / D[clock]
    shutil.rmtree(cache, ignore_errors=True)
    if workers:
        for run in ("first", "second"):
            r = two_workers(recipe, work / "run-mw", cache, pythonpath)
            row[f"workers_{run}"] = r
            row[f"workers_{run}_x_wall"] = max(w["wall"] for w in r) / row[run]["wall"]
            row[f"workers_{run}_x_cpu"] = sum(w["cpu"] for w in r) / row[run]["cpu"]
        shutil.rmtree(cache, ignore_errors=True)
    if workers and scans:
        row["decode_one"] = scan_seconds(folder, work / "scan-cache", 1, pythonpath)[0]
        row["decode_two"] = scan_seconds(folder, work / "scan-cache", 2, pythonpath)
    return row


def measure(n: int, work: Path, pool: list[list[bytes]], checkouts: list[tuple[str, str]], reps: int,
            workers: bool) -> dict[str, list[dict]]:
    """A folder of n photos, `reps` repetitions: D and D8 once each, then every checkout in turn (the order
    alternating, so neither always runs on a machine the other has just warmed)."""
    folder = make_folder(work / f"photos{n}", n, pool)
    tiny = make_folder(work / "tiny", 40, pool)
    rows: dict[str, list[dict]] = {label: [] for label, _ in checkouts}
    for rep in range(reps):
        D, D8 = plain_pass(folder), plain_pass(folder, ratio=8)
        order = checkouts if rep % 2 == 0 else checkouts[::-1]
        for label, path in order:
            row = one_rep(n, folder, work, tiny, D, label, path, rep, workers, scans=label == "this" and rep == 0)
            row.update(images=n, D8=D8, rep=rep)
            rows[label].append(row)
            print_row(row, f"{label}, repetition {rep + 1}")
            print("JSON " + json.dumps({"checkout": label, **row}), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def summary(rows: list[dict], label: str) -> None:
    """Medians (and ranges) over the repetitions of the figures the issue's targets name."""
    keys = ["first_D_wall", "first_D_cpu", "second_D_wall", "second_D_cpu", "workers_first_x_wall", "workers_second_x_wall"]
    parts = []
    for key in keys:
        values = sorted(r[key] for r in rows if key in r)
        if values:
            parts.append(f"{key} {float(np.median(values)):.2f} ({values[0]:.2f}-{values[-1]:.2f})")
    print(f"\n[{label}] {rows[0]['images']} images, median (range) of {len(rows)} repetition(s): " + ", ".join(parts), flush=True)


def print_row(row: dict, label: str) -> None:
    mb = 1024 * 1024
    d, d8 = row["D"], row["D8"]
    print(f"\n[{label}] {row['images']} images: D {d['wall']:.1f} s wall / {d['cpu']:.1f} s CPU (plain pass); "
          f"D8 (same at 1/8 JPEG scale) {d8['wall'] / d['wall']:.2f} D wall, {d8['cpu'] / d['cpu']:.2f} D CPU")
    first, second = row["startup"]["first"], row["startup"]["second"]
    print(f"  fixed start-up (40 images): first {first['wall']:.1f} s wall / {first['cpu']:.1f} s CPU, "
          f"second {second['wall']:.1f} / {second['cpu']:.1f} s")
    for run in ("first", "second"):
        r = row[run]
        print(
            f"  {run:6s} run: {row[f'{run}_D_wall']:.2f} D wall, {row[f'{run}_D_cpu']:.2f} D CPU beyond start-up "
            f"(wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s); first step at {r['first_step']:.1f} s, epoch {r['epoch']:.1f} s, "
            f"peak RSS {r['peak_rss'] / mb:.0f} MB, cache on disk {r['cache_bytes'] / mb:.1f} MB"
        )
    for run in ("first", "second"):
        if f"workers_{run}" in row:
            walls = ", ".join(f"{w['wall']:.1f}" for w in row[f"workers_{run}"])
            print(f"  2 workers, {run} run: {row[f'workers_{run}_x_wall']:.2f}x one process wall (slowest worker; walls {walls} s), "
                  f"{row[f'workers_{run}_x_cpu']:.2f}x its CPU (both workers together)")
    if "decode_two" in row:
        one, two = row["decode_one"], row["decode_two"]
        print(f"  decode (first scan) per worker: one process {one['cpu']:.1f} s CPU ({one['checked']} files), two workers "
              f"{two[0]['cpu']:.1f} / {two[1]['cpu']:.1f} s CPU ({two[0]['checked']} / {two[1]['checked']} files): "
              f"{max(w['cpu'] for w in two) / one['cpu']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--baseline", help="another checkout to time the same way (e.g. main, before this work)")
    parser.add_argument("--skip-this", action="store_true", help="time only the --baseline checkout")
    parser.add_argument("--workers-at", type=int, nargs="*", help="sizes with the two-worker runs (default: all)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, checkouts interleaved; medians reported")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pool = [[photo(rng) for _ in range(DISTINCT)] for _ in range(CLASSES)]
    work = Path(tempfile.mkdtemp(prefix="tlkit-scale-"))
    try:
        checkouts = ([] if args.skip_this else [("this", str(ROOT))]) + ([("baseline", args.baseline)] if args.baseline else [])
        for n in args.sizes:
            workers = args.workers_at is None or n in args.workers_at
            rows = measure(n, work, pool, checkouts, args.reps, workers)
            for label, _ in checkouts:
                summary(rows[label], label)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
