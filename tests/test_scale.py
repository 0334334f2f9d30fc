"""Issue 18: one decode per image per run, remembered scans, worker shards, JPEG scale, bucket-style paths.

Tiny images throughout; `bench/scale.py` measures the costs on photo-sized folders.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import load_data
from tlkit.recipe import Data

COLORS = {"red": (230, 30, 30), "blue": (30, 30, 230)}


def _jpeg(color, size=(24, 20), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(color)[None, None] + rng.normal(0, 15, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(img, quality=90).numpy()


def _folder(root: Path, per_class: int = 5, bad: bool = True) -> Path:
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(_jpeg(color, seed=i))
    if bad:
        (root / "red" / "broken.jpg").write_bytes(_jpeg(COLORS["red"])[:200])
    return root


def test_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_size():
    from tlkit.data.decode import MAX_DECODE_PIXELS, jpeg_ratio

    ratio = lambda h, w, s=None: int(jpeg_ratio(h, w, s))  # noqa: E731
    assert ratio(768, 1024, 224) == 2  # 384x512 covers 224; 192 at 1/4 would not
    assert ratio(768, 1024, 100) == 4  # 192x256
    assert ratio(768, 1024, 64) == 8  # 96x128
    assert ratio(768, 1024, 769) == 1  # nothing smaller covers it: full size (then upsampled)
    assert ratio(768, 1024) == 1  # no size: full size within the pixel bound
    assert ratio(12000, 12000, 10000) == 2  # the bound wins over the size
    assert MAX_DECODE_PIXELS < 12000 * 12000 <= 4 * MAX_DECODE_PIXELS
    data = tf.io.encode_jpeg(tf.zeros([77, 130, 3], tf.uint8)).numpy()
    from tlkit.data.decode import decode_image

    assert decode_image(tf.constant(data), min_size=16).shape == (20, 33, 3)  # 1/4 scale, rounded up


def test_scan_verdicts_are_remembered_outside_the_data_folder(tmp_path, monkeypatch):
    from tlkit.data.scan import scan_images, scan_options, verdict_file

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "data")
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    before = sorted(p.name for p in folder.rglob("*"))
    first = scan_images(paths, root=folder, progress=False)
    assert first.checked == 11 and [Path(p).name for p, _ in first.bad] == ["broken.jpg"]
    assert first.bad[0][1].startswith("truncated or corrupt JPEG")
    assert first.sizes[paths[0]] == (24, 20)  # (width, height) of the stored image
    assert verdict_file(folder).is_file() and str(verdict_file(folder)).startswith(str(tmp_path / "cache"))
    assert sorted(p.name for p in folder.rglob("*")) == before  # nothing written into the data

    second = scan_images(paths, root=folder, progress=False)
    assert second.checked == 0 and (second.good, second.bad, second.sizes) == (first.good, first.bad, first.sizes)

    broken = folder / "red" / "broken.jpg"
    broken.write_bytes(_jpeg(COLORS["red"], size=(30, 30)))  # repaired: new size and time
    os.utime(broken, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = scan_images(paths, root=folder, progress=False)
    assert third.checked == 1 and third.bad == [] and third.sizes[str(broken)] == (30, 30)
    with scan_options(rescan=True):
        assert scan_images(paths, root=folder, progress=False).checked == 11


def test_the_scan_decode_is_the_pipeline_cache(tmp_path):
    """Inside a run the scan keeps each image at the model size; the pipeline reads those, equal to a decode."""
    from tlkit.data.decode import decode_resized
    from tlkit.data.pipeline import cached_images, image_stream
    from tlkit.data.scan import scan_options

    folder = _folder(tmp_path / "data")
    with scan_options(16, remember=False):
        bundle = load_data(Data(source=str(folder), val_fraction=0.2), seed=0, progress=False)
        assert [Path(p).name for p, _ in bundle.skipped] == ["broken.jpg"]
        split = bundle.splits["train"]
        _, kept = image_stream(split.paths, split.labels, 16)
        assert kept  # every training image was decoded once, by the scan
        got = [(img.numpy(), int(y)) for img, y in cached_images(split, 16, cache=False)]
    want = [(decode_resized(tf.io.read_file(p), 16).numpy(), int(y)) for p, y in zip(split.paths, split.labels)]
    assert len(got) == len(want) == split.size
    for (a, ya), (b, yb) in zip(got, want):
        assert ya == yb and a.shape == (16, 16, 3) and np.array_equal(a, b)
    _, kept = image_stream(split.paths, split.labels, 16)
    assert not kept  # outside the run the copies are gone; the stream decodes the files itself


def test_each_worker_takes_a_disjoint_shard_of_the_files(tmp_path):
    from tlkit.distribute import Placement

    folder = _folder(tmp_path / "data", per_class=8, bad=False)
    bundle = load_data(Data(source=str(folder), val_fraction=0.25), seed=0, progress=False)
    shards = [Placement(None, "multi_worker", "float32", workers=2, index=i) for i in range(2)]
    parts = [place.shard_bundle(bundle) for place in shards]
    assert all(place.presharded for place in shards)
    for name, split in bundle.splits.items():
        mine = [set(part.splits[name].paths) for part in parts]
        assert not mine[0] & mine[1] and mine[0] | mine[1] == set(split.paths)  # every image once per epoch
        for part in parts:  # labels travel with their files
            labels = dict(zip(split.paths, split.labels.tolist()))
            assert part.splits[name].labels.tolist() == [labels[p] for p in part.splits[name].paths]
    sizes = [part.splits["train"].size for part in parts]
    assert abs(sizes[0] - sizes[1]) <= 1  # balanced: the workers' epochs take the same number of steps
    single = Placement(None, "default", "float32")
    assert single.shard_bundle(bundle) is bundle and not single.presharded


def test_worker_batches_have_equal_steps_and_none_empty():
    """33 examples, global batch 8 on 2 workers: 17 + 16 examples, 5 non-empty local batches each."""
    from tlkit.distribute import Placement

    class TwoReplicas:  # stands in for MultiWorkerMirroredStrategy: one replica per worker
        num_replicas_in_sync = 2

        def distribute_datasets_from_function(self, fn):
            return fn(None)

    seen = []
    for index, mine in ((0, range(0, 17)), (1, range(17, 33))):
        place = Placement(TwoReplicas(), "multi_worker", "float32", workers=2, index=index, presharded=True)
        local = tf.data.Dataset.from_tensor_slices(list(mine)).batch(8)  # a worker's pipeline, at the global batch
        batches = [b.numpy().tolist() for b in place.shard(local, count=33, batch=8)]  # validation: one pass
        assert len(batches) == 5 and all(1 <= len(b) <= 4 for b in batches), batches
        seen += [x for b in batches for x in b]
        # training repeats (one iterator per fit()), and fit() is told the epoch's steps
        assert place.steps_per_epoch(33, 8) == 5
        repeated = [b.numpy().tolist() for b in place.shard(local, count=33, batch=8, training=True).take(10)]
        assert repeated == batches + batches
    assert sorted(seen) == list(range(33))  # every example once per epoch


def test_a_folder_on_a_gfile_filesystem_loads_like_a_local_one(tmp_path):
    """ram:// stands in for gs:// or s3:// (their plugins register the same way)."""
    from tlkit.data.pipeline import cached_images

    root = f"ram://tlkit-test-{os.getpid()}/photos"
    for name, color in COLORS.items():
        tf.io.gfile.makedirs(f"{root}/{name}")
        for i in range(4):
            with tf.io.gfile.GFile(f"{root}/{name}/{i}.jpg", "wb") as f:
                f.write(_jpeg(color, seed=i))
    with tf.io.gfile.GFile(f"{root}/blue/bad.jpg", "wb") as f:
        f.write(b"<html>not found</html>")
    bundle = load_data(Data(source=root, val_fraction=0.25), seed=0, progress=False)
    assert bundle.class_names == ["blue", "red"]
    assert [(p, why.split(" (")[0]) for p, why in bundle.skipped] == [(f"{root}/blue/bad.jpg", "not an image")]
    assert sum(s.size for s in bundle.splits.values()) == 8
    images = [img.numpy() for img, _ in cached_images(bundle.splits["train"], 16, cache=False)]
    assert len(images) == bundle.splits["train"].size and all(im.shape == (16, 16, 3) for im in images)


def _all_sum_of_threads(barrier, deposits):
    """all_sum for two worker threads: what the collective adds up across worker processes in a real run."""

    def all_sum(index):
        def add(rows):
            deposits[(index, rows.shape)] = rows
            barrier.wait()
            total = sum(v for (_, shape), v in deposits.items() if shape == rows.shape)
            barrier.wait()
            return total
        return add

    return all_sum


def test_workers_split_the_check_and_agree_on_every_verdict(tmp_path):
    """Two workers (threads here; processes joined by a collective in a real run) each decode their shard only."""
    import threading

    from tlkit.data.scan import kept_images, scan_images, scan_options, shard_of

    folder = _folder(tmp_path / "data", per_class=20)  # 41 files: one worker holding all has odds 2**-40
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    barrier, deposits, results = threading.Barrier(2), {}, {}

    all_sum = _all_sum_of_threads(barrier, deposits)

    def worker(index):
        with scan_options(16, remember=False, workers=2, index=index, all_sum=all_sum(index)):
            scan = scan_images(paths, progress=False)
            mine = [p for p in scan.good if shard_of(p, 2) == index]
            theirs = [p for p in scan.good if shard_of(p, 2) != index]
            kept = [all(kept_images([p], 16) is not None for p in mine), all(kept_images([p], 16) is None for p in theirs)]
            results[index] = (scan, *kept)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    (a, *kept_a), (b, *kept_b) = results[0], results[1]
    assert a.checked + b.checked == len(paths) and min(a.checked, b.checked) > 0  # each decoded only its shard
    assert (a.good, a.bad, a.sizes) == (b.good, b.bad, b.sizes)  # and both know every verdict
    assert [Path(p).name for p, _ in a.bad] == ["broken.jpg"] and a.bad[0][1].startswith("truncated or corrupt JPEG")
    assert kept_a == kept_b == [True, True]  # each keeps the decoded images of its own shard, not the other's


def test_decoded_copies_are_kept_for_the_next_run(tmp_path, monkeypatch):
    """The next run on a folder at the same size decodes nothing (a changed file again); copies equal a decode."""
    from tlkit.data.decode import decode_resized
    from tlkit.data.pipeline import image_stream
    from tlkit.data.scan import kept_images, scan_images, scan_options, scan_summary

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "data")
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    good = [p for p in paths if not p.endswith("broken.jpg")]

    said = []

    def run(size=16, **options):
        with scan_options(size, **options):
            scan = scan_images(paths, root=folder, progress=False)
            said.append(scan_summary())
            ds, read_copies = image_stream(good, [0] * len(good), size)
            return scan.checked, read_copies, [img.numpy() for img, _ in ds]

    assert run()[:2] == (11, True)  # first run: every file decoded once, by the scan
    checked, read_copies, images = run()
    assert (checked, read_copies) == (0, True)  # next run: no decode at all
    assert said[0].startswith("11 files checked and decoded once") and said[1].startswith("11 files remembered")
    for path, image in zip(good, images):
        assert np.array_equal(image, decode_resized(tf.io.read_file(path), 16).numpy())
    assert run(size=8)[0] == 10  # another input size: its own copies (the broken file is remembered as bad)
    changed = folder / "blue" / "0.jpg"
    changed.write_bytes(_jpeg((0, 200, 0), seed=9))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    checked, _, images = run()
    assert checked == 1 and images[good.index(str(changed))][..., 1].mean() > 150  # the new picture, not the old copy
    assert run(rescan=True)[0] == 11
    monkeypatch.setenv("TLKIT_DECODED_CACHE_MB", "0")  # no room: copies live only while the run does
    with scan_options(16):
        assert scan_images(paths, root=folder, progress=False).checked == 0  # verdicts are still remembered
        assert kept_images(good, 16) is None and not image_stream(good, [0] * len(good), 16)[1]
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # nothing half-written left behind
    stores = [d for d in (tmp_path / "cache" / "decoded").iterdir() if d.name.endswith("-16")]
    assert len(stores) == 1 and len(list(stores[0].glob("*.pack"))) <= 4  # a few packs, not a file per image


def test_copies_read_back_in_any_order_each_with_its_own_target(tmp_path, monkeypatch):
    """Paths in any order, spread over several packs: each image equals its decode and keeps its target."""
    from tlkit.data.decode import decode_resized
    from tlkit.data.pipeline import image_stream
    from tlkit.data.scan import scan_images, scan_options

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "data", per_class=30, bad=False)
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    order = list(np.random.default_rng(3).permutation(len(paths)))[:45] + [0, 0]  # a subset, shuffled, a repeat
    with scan_options(64):
        scan_images(paths, root=folder, progress=False)
        ds, read_copies = image_stream([paths[i] for i in order], [[i, -i] for i in order], 64)
        got = [(img.numpy(), y.numpy().tolist()) for img, y in ds]
    packs = {p for p in (tmp_path / "cache" / "decoded").rglob("*.pack")}
    assert read_copies and len(packs) >= 3
    assert ds.cardinality() == len(order)  # fit() and its progress bar know an epoch's length
    assert [y for _, y in got] == [[i, -i] for i in order]
    for (image, _), i in zip(got, order):
        assert np.array_equal(image, decode_resized(tf.io.read_file(paths[i]), 64).numpy())


def test_a_cache_folder_that_cannot_be_written_still_trains_on_every_image(tmp_path, monkeypatch, capsys):
    """Nothing can be remembered or kept (the cache path is a file): the scan still gives every verdict and
    the pipeline decodes the images itself."""
    from tlkit.data.decode import decode_resized
    from tlkit.data.pipeline import image_stream
    from tlkit.data.scan import scan_images, scan_options

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(blocked))
    folder = _folder(tmp_path / "data")
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    good = [p for p in paths if not p.endswith("broken.jpg")]
    with scan_options(16):
        try:
            scan = scan_images(paths, root=folder, progress=False)
        except OSError:
            pytest.fail("a cache that cannot be written stopped the scan")
        ds, read_copies = image_stream(good, [0] * len(good), 16)
        images = [img.numpy() for img, _ in ds]
    assert scan.good == good and [Path(p).name for p, _ in scan.bad] == ["broken.jpg"]
    assert not read_copies and np.array_equal(images[0], decode_resized(tf.io.read_file(good[0]), 16).numpy())
    assert "could not remember the scan" in capsys.readouterr().err


def test_every_worker_reads_the_copies_any_worker_kept(tmp_path, monkeypatch):
    """The chief evaluates every test file: it reads the copies the other worker decoded (once that worker has
    listed them, in the first run as in the next), instead of decoding half the split again."""
    import threading

    from tlkit.data.pipeline import image_stream
    from tlkit.data.scan import scan_images, scan_options

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "data", per_class=10, bad=False)
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    barrier, deposits, found = threading.Barrier(2), {}, {}

    all_sum = _all_sum_of_threads(barrier, deposits)

    def worker(index, run):
        with scan_options(16, workers=2, index=index, all_sum=all_sum(index)):
            checked = scan_images(paths, root=folder, progress=False).checked
            barrier.wait()  # both scans have listed their copies
            found[(run, index)] = (checked, image_stream(paths, [0] * len(paths), 16)[1])

    for run in ("first", "next"):
        threads = [threading.Thread(target=worker, args=(i, run)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    first, following = [found[("first", i)] for i in range(2)], [found[("next", i)] for i in range(2)]
    assert sum(c for c, _ in first) == len(paths) and all(read for _, read in first)  # all copies, half decoded each
    assert following == [(0, True), (0, True)]  # the next run decodes nothing and reads every copy


def test_shards_spread_small_numbered_folders_over_the_workers():
    """A dozen files named by a digit, in any parent folder, never all land with one worker (with crc32 as the
    hash they did under a quarter of the parent folders: its low bit is affine in the name's bits)."""
    from tlkit.data.scan import shard_of

    names = [f"{color}/{i}.jpg" for color in ("blue", "red") for i in range(6)] + ["red/broken.jpg"]
    lopsided = [n for n in range(300) if len({shard_of(f"/tmp/run-{n}/data/{name}", 2) for name in names}) == 1]
    assert len(lopsided) <= 1, lopsided  # 13 files on one of 2 workers by chance: odds 2**-12 per folder
    for workers in (2, 3):
        counts = np.bincount([shard_of(f"/data/cat/photo_{i:04d}.jpg", workers) for i in range(600)], minlength=workers)
        assert counts.min() > 0.8 * 600 / workers, counts


def test_tlkit_cache_lists_and_clears_what_runs_remember(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tlkit.cli import cli
    from tlkit.data.scan import scan_images, scan_options

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "data")
    other = _folder(tmp_path / "other", per_class=2, bad=False)
    for root in (folder, other):
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        with scan_options(16):
            scan_images(paths, root=root, progress=False)
    runner = CliRunner()
    listing = runner.invoke(cli, ["cache"]).output
    rows = [line.split() for line in listing.splitlines()[2:]]  # under the header lines
    assert sorted((r[0], r[1], r[2], r[-1]) for r in rows) == [
        ("decoded", "16", "10", str(folder)),  # the good images' copies
        ("decoded", "16", "4", str(other)),
        ("scan", "-", "11", str(folder)),  # every verdict, the broken file's too
        ("scan", "-", "4", str(other)),
    ]
    assert str(other) not in runner.invoke(cli, ["cache", str(folder)]).output
    assert runner.invoke(cli, ["cache", "--force"]).exit_code == 2  # --force only with --clear

    cleared = runner.invoke(cli, ["cache", "--clear", str(folder)]).output
    assert "removed 1 entry" in cleared and "a run may be reading it" in cleared  # the copies just written stay
    assert "removed 1 entry" in runner.invoke(cli, ["cache", "--clear", "--force", str(folder)]).output
    assert "nothing remembered" in runner.invoke(cli, ["cache", str(folder)]).output
    assert len([line for line in runner.invoke(cli, ["cache"]).output.splitlines() if str(other) in line]) == 2
    with scan_options(16):
        paths = sorted(str(p) for p in folder.rglob("*.jpg"))
        assert scan_images(paths, root=folder, progress=False).checked == 11  # checked and decoded again
