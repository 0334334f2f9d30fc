"""Segmentation: a class per pixel, from a backbone with skips and a registered decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlkit.tasks.base import Task, class_weight_list, per_class_lines, per_class_markdown
from tlkit.tasks.segmentation.recipe import SegmentationRecipe

class Segmentation(Task):
    name = "segmentation"
    recipe = SegmentationRecipe
    headline = "mean_iou"
    activation = "softmax"
    per_pixel = True
    quick_recipe = {"data": {"source": "builtin:shapes/tiny"}, "model": {"decoder": {"widths": [16, 8]}}}
    summary = "a class per pixel: images/ + masks/ folders, TFDS mask features; U-Net/FPN decoders, mean IoU"
    signatures = {
        "serving_default": "images: uint8 [batch, height, width, 3] -> classes int32 [batch, height, width], "
        "probabilities float32 [batch, height, width, classes], at the input's size",
        "serving_bytes": "image_bytes: string [batch] -> classes, probabilities at the first image's size",
    }

    def check(self, recipe: Any) -> None:
        from tlkit.tasks.segmentation.model import check_segmenter

        super().check(recipe)
        check_segmenter(recipe)

    def build_model(self, recipe: Any, num_classes: int) -> Any:
        from tlkit.tasks.segmentation.model import build_segmenter

        return build_segmenter(recipe, num_classes)

    def head_name(self, recipe: Any) -> str:
        return f"{recipe.model.decoder.type} decoder"

    def num_classes_hint(self, recipe: Any) -> int:
        values = recipe.data.masks.values
        return len(set(values.values())) if values else (5 if recipe.data.source.strip().startswith("builtin:") else 2)

    def folder(self, path: str, data: Any, seed: int, progress: bool) -> Any:
        from tlkit.tasks.segmentation.masks import segmentation_folder

        return segmentation_folder(path, data, seed, progress=progress)

    def tfds(self, builder: Any, name: str, data: Any, seed: int) -> Any:
        from tlkit.tasks.segmentation.masks import tfds_masks

        return tfds_masks(builder, name, data)

    def builtin(self, builder: Any, name: str, data: Any, seed: int) -> Any:
        import tensorflow as tf

        from tlkit.data.shapes import CLASS_NAMES
        from tlkit.tasks.segmentation.masks import tfds_masks

        # the built-in masks are 0/1 per image: shape pixels take the value label + 1
        default = {0: "background", **{i + 1: n for i, n in enumerate(CLASS_NAMES)}}
        return tfds_masks(builder, name, data, default, lambda ex: ex["mask"] * tf.cast(ex["label"] + 1, tf.uint8))

    def describe(self, recipe: Any, bundle: Any) -> list[str]:
        mapping = bundle.info["mapping"]
        values = ", ".join(f"{v}: {n}" for v, n in sorted(mapping.values.items()))
        ignored = f"; ignored values {list(mapping.ignore)}" if mapping.ignore else ""
        d = recipe.model.decoder
        return [f"classes   {len(bundle.class_names)} mask classes ({values}){ignored}", f"decoder   {d.type}, widths {d.widths}, {d.upsample}"]

    def pipelines(self, bundle: Any, rec: Any, cache: Path) -> tuple[Any, Any, Any]:
        from tlkit.models.stages import input_size
        from tlkit.tasks.segmentation.pipeline import cached_pairs, make_seg_pipeline

        size, batch, table = input_size(rec), rec.train.batch_size, bundle.info["mapping"].table()
        train_split = bundle.splits["train"]
        pairs = cached_pairs(train_split, size, table, cache_dir=cache / "train")
        train = make_seg_pipeline(train_split, size, table, batch, training=True, augment=rec.data.augment, seed=rec.seed, pairs=pairs)
        plain = make_seg_pipeline(train_split, size, table, batch, pairs=pairs)
        val_pairs = cached_pairs(bundle.splits["val"], size, table, cache_dir=cache / "val")
        return train, plain, make_seg_pipeline(bundle.splits["val"], size, table, batch, pairs=val_pairs)

    def eval_pipeline(self, bundle: Any, rec: Any, split: str, batch: int) -> Any:
        from tlkit.models.stages import input_size
        from tlkit.tasks.segmentation.pipeline import cached_pairs, make_seg_pipeline

        size, table = input_size(rec), bundle.info["mapping"].table()
        pairs = cached_pairs(bundle.splits[split], size, table, cache=False)
        return make_seg_pipeline(bundle.splits[split], size, table, batch, pairs=pairs)

    def objective(self, rec: Any, bundle: Any) -> tuple[Any, list[Any], Any]:
        from tlkit.tasks.segmentation.losses import SegmentationLoss, segmentation_metrics

        n, lw = len(bundle.class_names), rec.train.loss
        weights = class_weight_list(rec.train.class_weights, bundle.class_names)
        return SegmentationLoss(n, lw.cross_entropy, lw.dice, lw.focal, lw.focal_gamma, weights), segmentation_metrics(n), None

    def evaluate(self, probabilities: Any, batches: Any, class_names: list[str], state: dict[str, Any]) -> dict[str, Any]:
        from tlkit.tasks.segmentation.metrics import evaluate_batches

        return evaluate_batches(probabilities, batches, class_names)

    def format_metrics(self, m: dict[str, Any]) -> list[str]:
        head = f"mean IoU {m['mean_iou']:.4f}   pixel accuracy {m['pixel_accuracy']:.4f}   loss {m['loss']:.4f}"
        return [head, *per_class_lines(m["per_class"], [("iou", ".3f"), ("dice", ".3f")])]

    def archive(self, model: Any, labels: list[str], size: int, state: dict[str, Any], probabilities: Any = None) -> Any:
        from tlkit.tasks.segmentation.serving import build_segmentation_archive

        return build_segmentation_archive(model, labels, size, probabilities)

    def predict(self, runner: Any, files: list[tuple[int, str, bytes]], labels: list[str], meta: dict[str, Any],
                options: dict[str, Any]) -> dict[int, dict[str, Any]]:
        from tlkit.tasks.segmentation.serving import predict_masks, segmenter

        out = options.get("out")
        return predict_masks(segmenter(runner), files, labels, Path(out) if out is not None else None, options.get("stems"))

    def format_prediction(self, r: dict[str, Any]) -> str:
        shown = ", ".join(f"{k} {v:.1%}" for k, v in r["fractions"].items())
        return f"{r['path']}: {shown}" + (f" -> {r['mask']}, {r['overlay']}" if "mask" in r else "")

    def csv_columns(self, labels: list[str], options: dict[str, Any]) -> list[str]:
        return ["mask", "overlay", *(f"fraction_{name}" for name in labels)]

    def csv_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """The written mask and overlay files (empty without --out) and each class's share of the pixels."""
        row = {key: result.get(key, "") for key in ("mask", "overlay")}
        row.update({f"fraction_{name}": f"{share:.6f}" for name, share in result["fractions"].items()})
        return row

    def report_figures(self, ctx: Any) -> list[Any]:
        from tlkit.tasks.segmentation.figures import segmentation_figures

        return segmentation_figures(ctx)

    def card_metrics(self, m: dict[str, Any]) -> list[str]:
        lines = [
            f"mean IoU **{m.get('mean_iou', 0):.4f}**, pixel accuracy {m.get('pixel_accuracy', 0):.4f}, "
            f"mean Dice {m.get('mean_dice', 0):.4f}, loss {m.get('loss', 0):.4f}"
        ]
        return lines + per_class_markdown(m.get("per_class") or {}, [("iou", "IoU", ".3f"), ("dice", "Dice", ".3f")])

    def card_output(self, meta: dict[str, Any]) -> str:
        size = meta.get("input_size")
        return (f"`[batch, {size}, {size}, {len(meta.get('labels', []))}]` per pixel, at the input size: "
                "resize to the image's size, then argmax")

    def card_usage(self, meta: dict[str, Any]) -> str:
        return "mask = probs.argmax(-1)  # class index per pixel; labels[i] names class i\n"


TASK = Segmentation()
