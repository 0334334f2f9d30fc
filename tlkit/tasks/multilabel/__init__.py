"""Multi-label classification: any number of labels per image, one sigmoid per class of a pooling head.

Data: a folder of images with a CSV (`path,labels`), a TFDS sequence-of-class-labels
feature, or `builtin:shapes/multi`. After training, one threshold per class is chosen
on the val split (best F1) and travels with the run and every export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlkit.tasks.base import EMBEDDING_SIGNATURES, Task, class_weight_list, per_class_lines, per_class_markdown
from tlkit.tasks.multilabel.recipe import MultiLabelRecipe


def _identity(labels: Any) -> Any:
    return labels


def _collect(probabilities: Any, batches: Any) -> tuple[np.ndarray, np.ndarray]:
    ys, ps = [], []
    for images, targets in batches:
        ys.append(np.asarray(targets))
        ps.append(np.asarray(probabilities(images)))
    return np.concatenate(ys), np.concatenate(ps)


class MultiLabel(Task):
    name = "multilabel"
    recipe = MultiLabelRecipe
    headline = "mean_average_precision"
    activation = "sigmoid"
    cache_features = True
    quick_recipe = {"data": {"source": "builtin:shapes/multi_tiny"}}
    summary = "any number of labels per image: a CSV of labels, TFDS label sequences; sigmoid head, mAP"
    signatures = {
        "serving_default": "images: uint8 [batch, height, width, 3] -> probabilities float32 [batch, labels], "
        "predicted bool [batch, labels] (over the label's threshold), labels string [batch, labels] (name or '')",
        "serving_bytes": "image_bytes: string [batch] (JPEG/PNG/GIF/BMP) -> probabilities, predicted, labels",
        **EMBEDDING_SIGNATURES,
    }

    def build_model(self, recipe: Any, num_classes: int) -> Any:
        from tlkit.models.heads import build_classifier

        return build_classifier(recipe, num_classes)

    def num_classes_hint(self, recipe: Any) -> int:
        return 4 if recipe.data.source.strip().startswith("builtin:") else 2

    def folder(self, path: str, data: Any, seed: int, progress: bool) -> Any:
        from tlkit.tasks.multilabel.data import csv_folder

        return csv_folder(path, data, seed, progress=progress)

    def tfds(self, builder: Any, name: str, data: Any, seed: int) -> Any:
        from tlkit.tasks.multilabel.data import tfds_labels

        return tfds_labels(builder, name, data)

    def describe(self, recipe: Any, bundle: Any) -> list[str]:
        labels = bundle.splits["train"].labels
        counts = bundle.counts("train")
        width = max(len(n) for n in [*bundle.class_names, "(no label)"])
        lines = [f"labels    {len(bundle.class_names)} (train images carrying each; {labels.sum(axis=1).mean():.2f} per image)"]
        lines += [f"  {name:<{width}}  {counts[name]}" for name in bundle.class_names]
        return lines + [f"  {'(no label)':<{width}}  {int((labels.sum(axis=1) == 0).sum())}"]

    def pipelines(self, bundle: Any, rec: Any, cache: Path) -> tuple[Any, Any, Any]:
        from tlkit.data.pipeline import cached_images, make_pipeline
        from tlkit.models.stages import input_size

        size, batch, train_split = input_size(rec), rec.train.batch_size, bundle.splits["train"]
        images = cached_images(train_split, size, cache_dir=cache / "train")
        train = make_pipeline(train_split, size, _identity, batch, training=True, augment=rec.data.augment, seed=rec.seed, images=images)
        plain = make_pipeline(train_split, size, _identity, batch, images=images)
        return train, plain, make_pipeline(bundle.splits["val"], size, _identity, batch, cache_dir=cache / "val")

    def eval_pipeline(self, bundle: Any, rec: Any, split: str, batch: int) -> Any:
        from tlkit.data.pipeline import make_pipeline
        from tlkit.models.stages import input_size

        return make_pipeline(bundle.splits[split], input_size(rec), _identity, batch, cache=False)

    def objective(self, rec: Any, bundle: Any) -> tuple[Any, list[Any], Any]:
        from tlkit.tasks.multilabel.losses import MultiLabelLoss, positive_weights, training_metrics

        setting = rec.train.positive_weights
        if setting == "auto":
            weights = positive_weights(bundle.splits["train"].labels)
        else:
            weights = class_weight_list(setting, bundle.class_names)
        loss = MultiLabelLoss(label_smoothing=rec.train.label_smoothing, positive_weights=weights, focal_gamma=rec.train.focal_gamma)
        return loss, training_metrics(len(bundle.class_names)), None

    def fit_state(self, probabilities: Any, bundle: Any, rec: Any) -> dict[str, Any]:
        """Per-class thresholds: the best F1 on the val split (or the recipe's fixed one)."""
        from tlkit.tasks.multilabel.metrics import choose_thresholds

        n = len(bundle.class_names)
        if rec.train.threshold != "auto":
            return {"thresholds": [float(rec.train.threshold)] * n, "thresholds_from": "recipe"}
        y, p = _collect(probabilities, self.eval_pipeline(bundle, rec, "val", rec.train.batch_size))
        return {"thresholds": [float(t) for t in choose_thresholds(y, p)], "thresholds_from": "val (best F1 per class)"}

    def evaluate(self, probabilities: Any, batches: Any, class_names: list[str], state: dict[str, Any]) -> dict[str, Any]:
        from tlkit.tasks.multilabel.metrics import compute_metrics
        from tlkit.tasks.multilabel.serving import thresholds_of

        y, p = _collect(probabilities, batches)
        return compute_metrics(y, p, class_names, thresholds_of(state, len(class_names)))

    def format_metrics(self, m: dict[str, Any]) -> list[str]:
        lines = [
            f"mAP {_num(m['mean_average_precision'])}   micro F1 {m['micro_f1']:.4f}   macro F1 {_num(m['macro_f1'])}   "
            f"subset accuracy {m['subset_accuracy']:.4f}   hamming loss {m['hamming_loss']:.4f}   loss {m['loss']:.4f}"
        ]
        columns = [("average_precision", ".3f"), ("precision", ".3f"), ("recall", ".3f"), ("f1", ".3f"),
                   ("threshold", ".3f"), ("support", "d")]
        return lines + per_class_lines(m["per_class"], columns, first="label")

    def archive(self, model: Any, labels: list[str], size: int, state: dict[str, Any], probabilities: Any = None) -> Any:
        from tlkit.tasks.multilabel.serving import build_archive

        return build_archive(model, labels, size, state, probabilities)

    def predict(self, runner: Any, files: list[tuple[int, str, bytes]], labels: list[str], meta: dict[str, Any],
                options: dict[str, Any]) -> dict[int, dict[str, Any]]:
        from tlkit.tasks.multilabel.serving import over_thresholds

        return over_thresholds(runner, files, labels, options.get("state") or {}, int(options.get("batch_size", 32)))

    def format_prediction(self, result: dict[str, Any]) -> str:
        if not result["predictions"]:
            return f"{result['path']}: (no label over its threshold)"
        return super().format_prediction(result)

    def csv_columns(self, labels: list[str], options: dict[str, Any]) -> list[str]:
        return ["labels", "scores"]

    def csv_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """Every label over its threshold and its score, best first, `;`-separated (both empty: no label)."""
        shown = result["predictions"]
        return {"labels": ";".join(p["label"] for p in shown), "scores": ";".join(f"{p['score']:.6f}" for p in shown)}

    def report_figures(self, ctx: Any) -> list[Any]:
        from tlkit import runs
        from tlkit.models.parts import probability_fn
        from tlkit.tasks.multilabel.figures import multilabel_figures
        from tlkit.tasks.multilabel.serving import thresholds_of

        state_file = ctx.run_dir / runs.TASK_STATE
        state = runs.read_json(state_file) if state_file.is_file() else {}
        call = probability_fn(ctx.model(), self.activation)
        return multilabel_figures(ctx, lambda x: call(x).numpy(), list(thresholds_of(state, len(ctx.labels))))

    def card_metrics(self, m: dict[str, Any]) -> list[str]:
        lines = [
            f"mAP **{_num(m.get('mean_average_precision'))}**, micro F1 {m.get('micro_f1', 0):.4f}, "
            f"macro F1 {_num(m.get('macro_f1'))}, subset accuracy {m.get('subset_accuracy', 0):.4f}, "
            f"hamming loss {m.get('hamming_loss', 0):.4f}"
        ]
        columns = [("average_precision", "AP", ".3f"), ("precision", "precision", ".3f"), ("recall", "recall", ".3f"),
                   ("f1", "F1", ".3f"), ("threshold", "threshold", ".3f"), ("support", "support", "d")]
        return lines + per_class_markdown(m.get("per_class") or {}, columns, first="label")

    def card_output(self, meta: dict[str, Any]) -> str:
        return (f"`[batch, {len(meta.get('labels', []))}]`, one independent probability per label (sigmoid); a label "
                "is present when its probability reaches its threshold (metadata.json `task_state.thresholds`, "
                "chosen on the val split)")

    def card_usage(self, meta: dict[str, Any]) -> str:
        thresholds = [round(t, 4) for t in (meta.get("task_state") or {}).get("thresholds", [])]
        return f"thresholds = {thresholds}\nprint([labels[i] for i, p in enumerate(probs) if p >= thresholds[i]])\n"


def _num(value: Any, width: int = 0) -> str:
    return f"{value:{width}.3f}" if value is not None else "-".rjust(width)


TASK = MultiLabel()
