"""MediaPipe Tasks on tlkit's TFLite exports against `tlkit predict`, on the real data.

    python bench/mediapipe_tasks.py --run-dir FLOWERS_RUN [--seg-run-dir PETS_RUN] [--out DIR]

Exports each run as TFLite float32 and int8 (float I/O, and uint8 I/O for the
classifier), then runs MediaPipe's `vision.ImageClassifier` / `vision.ImageSegmenter`
on the file alone (labels and normalization from its TFLite metadata) and tlkit's
TFLite runner (what `tlkit predict` runs) on the same images of the val split, at
the model's input size. Prints top-1 agreement (classifier; targets >= 99% float,
>= 95% int8) and pixel agreement of the category masks (segmenter; target >= 98%),
and whether MediaPipe's category names equal labels.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA = {"classification": SHARED / "classification" / "flowers_128",
        "segmentation": SHARED / "segmentation" / "oxford_pets_sample"}
VARIANTS = [("float32", {}), ("int8", {"quantize": "int8"}), ("int8 uint8 I/O", {"quantize": "int8", "integer_io": True})]


def val_images(run_dir: Path, data: str) -> np.ndarray:
    from tlkit.tasks import get_task, load_data, load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml", {"data.source": data})
    task = get_task(recipe)
    bundle = load_data(recipe, progress=False)
    batches = task.eval_pipeline(bundle, recipe, "val", 64)
    return np.concatenate([x.numpy() for x, _ in batches]).round().clip(0, 255).astype(np.uint8)


def mp_image(image: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))


def classifier_rows(run_dir: Path, out: Path) -> list[dict]:
    import tlkit
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from tlkit.formats import load_runner

    images = val_images(run_dir, str(DATA["classification"]))
    rows = []
    for name, options in VARIANTS:
        folder = tlkit.export(run_dir, out=out / name.replace(" ", "-"), format="tflite", data=str(DATA["classification"]),
                              quiet=True, **options)
        labels = (folder / "labels.txt").read_text().split()
        runner = load_runner(folder)[2]
        expected = np.concatenate([runner(images[i : i + 64].astype(np.float32)) for i in range(0, len(images), 64)]).argmax(1)
        mp_options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(folder / "model.tflite")),
                                                   max_results=len(labels))
        with vision.ImageClassifier.create_from_options(mp_options) as classifier:
            results = [classifier.classify(mp_image(im)).classifications[0].categories for im in images]
        got = [labels.index(c[0].category_name) for c in results]
        rows.append({"task": "classification", "variant": name, "images": len(images),
                     "names_equal_labels": sorted(c.category_name for c in results[0]) == sorted(labels),
                     "agreement": float(np.mean(np.array(got) == expected)), "target": 0.99 if name == "float32" else 0.95})
        print(rows[-1], flush=True)
    return rows


def segmenter_rows(run_dir: Path, out: Path) -> list[dict]:
    import tlkit
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from tlkit.formats import load_runner

    images = val_images(run_dir, str(DATA["segmentation"]))
    rows = []
    for name, options in VARIANTS[:2]:
        folder = tlkit.export(run_dir, out=out / ("seg-" + name), format="tflite", data=str(DATA["segmentation"]),
                              quiet=True, **options)
        runner = load_runner(folder)[2]
        expected = np.concatenate([runner(images[i : i + 16].astype(np.float32)) for i in range(0, len(images), 16)]).argmax(-1)
        mp_options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(folder / "model.tflite")),
                                                  output_category_mask=True, output_confidence_masks=False)
        with vision.ImageSegmenter.create_from_options(mp_options) as segmenter:
            got = np.stack([segmenter.segment(mp_image(im)).category_mask.numpy_view()[..., 0].copy() for im in images])
        rows.append({"task": "segmentation", "variant": name, "images": len(images),
                     "pixel_agreement": float(np.mean(got == expected)), "target": 0.98})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a flowers classification run")
    parser.add_argument("--seg-run-dir", help="a pets segmentation run")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-mediapipe"))
    args = parser.parse_args()
    out = Path(args.out)
    rows = (classifier_rows(Path(args.run_dir), out) if args.run_dir else []) + \
        (segmenter_rows(Path(args.seg_run_dir), out) if args.seg_run_dir else [])
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
