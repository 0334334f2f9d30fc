"""Classification: one label per image, softmax over the classes of a pooling head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlkit.tasks.base import EMBEDDING_SIGNATURES, Task, class_weight_list, per_class_lines, per_class_markdown
from tlkit.tasks.classification.recipe import ClassificationRecipe


class Classification(Task):
    name = "classification"
    recipe = ClassificationRecipe
    headline = "accuracy"
    activation = "softmax"
    cache_features = True
    summary = "one label per image: class folders, TFDS class labels; softmax head, accuracy"
    signatures = {
        "serving_default": "images: uint8 [batch, height, width, 3] -> probabilities, classes",
        "serving_bytes": "image_bytes: string [batch] (JPEG/PNG/GIF/BMP) -> probabilities, classes",
        **EMBEDDING_SIGNATURES,
    }

    def build_model(self, recipe: Any, num_classes: int) -> Any:
        from tlkit.models.heads import build_classifier

        return build_classifier(recipe, num_classes)

    def num_classes_hint(self, recipe: Any) -> int:
        from tlkit.tasks.classification.data import count_class_folders

        return count_class_folders(recipe.data.source)

    def folder(self, path: str, data: Any, seed: int, progress: bool) -> Any:
        from tlkit.tasks.classification.data import class_folders

        return class_folders(path, data, seed, progress=progress)

    def tfds(self, builder: Any, name: str, data: Any, seed: int) -> Any:
        from tlkit.tasks.classification.data import tfds_classes

        return tfds_classes(builder, name, data)

    def pipelines(self, bundle: Any, rec: Any, cache: Path) -> tuple[Any, Any, Any]:
        from tlkit.data.pipeline import cached_images, make_pipeline, one_hot
        from tlkit.models.stages import input_size

        size, batch, encode = input_size(rec), rec.train.batch_size, one_hot(len(bundle.class_names))
        train_split = bundle.splits["train"]
        images = cached_images(train_split, size, cache_dir=cache / "train")
        train = make_pipeline(train_split, size, encode, batch, training=True, augment=rec.data.augment, seed=rec.seed, images=images)
        plain = make_pipeline(train_split, size, encode, batch, images=images)
        val = make_pipeline(bundle.splits["val"], size, encode, batch, cache_dir=cache / "val")
        return train, plain, val

    def eval_pipeline(self, bundle: Any, rec: Any, split: str, batch: int) -> Any:
        from tlkit.data.pipeline import make_pipeline, one_hot
        from tlkit.models.stages import input_size

        return make_pipeline(bundle.splits[split], input_size(rec), one_hot(len(bundle.class_names)), batch, cache=False)

    def objective(self, rec: Any, bundle: Any) -> tuple[Any, list[Any], Any]:
        import keras
        import numpy as np

        n = len(bundle.class_names)
        k = min(5, max(1, n - 1))
        counts = np.bincount(bundle.splits["train"].labels, minlength=n)
        weights = class_weight_list(rec.train.class_weights, bundle.class_names, counts)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=rec.train.label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.TopKCategoricalAccuracy(k, name="top_k_accuracy")]
        return loss, metrics, (dict(enumerate(weights)) if weights is not None else None)

    def evaluate(self, probabilities: Any, batches: Any, class_names: list[str], state: dict[str, Any]) -> dict[str, Any]:
        from tlkit.tasks.classification.metrics import collect, compute_metrics

        y, p = collect(probabilities, batches)
        return compute_metrics(y, p, class_names)

    def format_metrics(self, m: dict[str, Any]) -> list[str]:
        head = f"accuracy {m['accuracy']:.4f}   loss {m['loss']:.4f}   top-{m['top_k']} {m['top_k_accuracy']:.4f}"
        return [head, *per_class_lines(m["per_class"], [("precision", ".3f"), ("recall", ".3f"), ("f1", ".3f"), ("support", "d")])]

    def archive(self, model: Any, labels: list[str], size: int, state: dict[str, Any], probabilities: Any = None) -> Any:
        from tlkit.tasks.classification.serving import build_archive

        return build_archive(model, labels, size, probabilities)

    def predict(self, runner: Any, files: list[tuple[int, str, bytes]], labels: list[str], meta: dict[str, Any],
                options: dict[str, Any]) -> dict[int, dict[str, Any]]:
        from tlkit.tasks.classification.serving import top_k

        return top_k(runner, files, labels, options)

    def report_figures(self, ctx: Any) -> list[Any]:
        import numpy as np

        from tlkit.models.parts import probability_fn
        from tlkit.tasks.classification.figures import classification_figures

        call = probability_fn(ctx.model(), self.activation)
        return classification_figures(ctx, lambda x: call(x).numpy(), lambda y: np.argmax(y.numpy(), axis=1))

    def card_metrics(self, m: dict[str, Any]) -> list[str]:
        lines = [
            f"accuracy **{m.get('accuracy', 0):.4f}**, loss {m.get('loss', 0):.4f}, "
            f"top-{m.get('top_k', '?')} accuracy {m.get('top_k_accuracy', 0):.4f}"
        ]
        columns = [("precision", "precision", ".3f"), ("recall", "recall", ".3f"), ("f1", "f1", ".3f"), ("support", "support", "d")]
        return lines + per_class_markdown(m.get("per_class") or {}, columns)


TASK = Classification()
