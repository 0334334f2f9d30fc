"""The base task: every question generic code may ask about a task, and the shared answers.

A task package (`tlkit/tasks/NAME/`) subclasses `Task` and owns everything that
differs between tasks: its recipe fields, data layouts, pipelines, model head or
decoder, loss and metrics, evaluation, serving signatures, how `predict` prints and
writes results, its report figures and model-card section, its headline metric.
Generic code (train, evaluation, exporting, prediction, report, cli, ...) holds a
`Task` from the registry (`tlkit.tasks.get_task`) and calls these methods; it never
compares a task's name. The defaults here are what most tasks share.

Imports stay light at module level (no TensorFlow): `tlkit recipe` and `--help` load
the registry without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from tlkit.errors import TlkitError

if TYPE_CHECKING:
    import keras

    from tlkit.data.bundle import DataBundle
    from tlkit.recipe import Recipe

#: the pooled-feature signatures of every export whose model has a pooling head (tlkit.models.serving)
EMBEDDING_SIGNATURES = {
    "embeddings": "images: uint8 [batch, height, width, 3] -> embeddings float32 [batch, features]",
    "embeddings_bytes": "image_bytes: string [batch] -> embeddings",
}

ProbabilityFn = Callable[[Any], Any]  # float32 images [B, S, S, 3] in [0, 255] -> probabilities


class Task:
    name: ClassVar[str]
    recipe: ClassVar[type]  # the task's Recipe subclass: generic sections plus its own fields
    headline: ClassVar[str]  # the metric printed at the end of a run and compared in benchmarks
    activation: ClassVar[str] = "softmax"  # logits -> probabilities in evaluation and every export
    cache_features: ClassVar[bool] = False  # a frozen backbone's pooled features can stand in for images
    per_pixel: ClassVar[bool] = False  # outputs move with the image (masks): test-time flips are flipped back
    signatures: ClassVar[dict[str, str]] = {}  # SavedModel signatures, as the model card and metadata describe them
    summary: ClassVar[str] = ""  # one line for `tlkit recipe --reference` and the README
    #: recipe sections of a seconds-long run on the built-in data: what the shared test harness trains for every task
    quick_recipe: ClassVar[dict[str, Any]] = {"data": {"source": "builtin:shapes/tiny"}}

    # ------------------------------------------------------------------ recipe and model

    def monitor(self, recipe: "Recipe") -> str:
        """The metric that picks the best checkpoint."""
        return recipe.train.monitor or f"val_{self.headline}"

    def check(self, recipe: "Recipe") -> None:
        """Fail on a bad backbone, option, size or weights path before any data is read."""
        from tlkit.models.stages import check_model

        check_model(recipe)

    def build_model(self, recipe: "Recipe", num_classes: int) -> "keras.Model":
        raise NotImplementedError

    def head_name(self, recipe: "Recipe") -> str:
        """What sits on the backbone, for `tlkit inspect RECIPE`."""
        return "head"

    def num_classes_hint(self, recipe: "Recipe") -> int:
        """Classes of a model built from a recipe alone (inspect), without reading the images."""
        return 2

    # ------------------------------------------------------------------ data

    def folder(self, path: str, data: Any, seed: int, progress: bool) -> "DataBundle":
        raise TlkitError(f"task '{self.name}' cannot read a folder source")

    def tfds(self, builder: Any, name: str, data: Any, seed: int) -> "DataBundle":
        raise TlkitError(f"task '{self.name}' cannot read TFDS dataset '{name}'")

    def builtin(self, builder: Any, name: str, data: Any, seed: int) -> "DataBundle":
        """The built-in shapes dataset: by default read like any TFDS dataset."""
        return self.tfds(builder, name, data, seed)

    def describe(self, recipe: "Recipe", bundle: "DataBundle") -> list[str]:
        """The task's lines of the run summary (classes and their counts, the decoder, ...)."""
        counts = bundle.counts("train")
        width = max(len(n) for n in bundle.class_names)
        lines = [f"classes   {len(bundle.class_names)} (train count each)"]
        lines += [f"  {name:<{width}}  {counts[name]}" for name in bundle.class_names]
        return lines

    def pipelines(self, bundle: "DataBundle", recipe: "Recipe", cache: Path) -> tuple[Any, Any, Any]:
        """(augmented train, plain train, val) batches."""
        raise NotImplementedError

    def eval_pipeline(self, bundle: "DataBundle", recipe: "Recipe", split: str, batch: int) -> Any:
        """Plain batches of one split (no augmentation, no cache)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training and evaluation

    def objective(self, recipe: "Recipe", bundle: "DataBundle") -> tuple[Any, list[Any], Any]:
        """(loss, metrics, class_weight argument of fit), fresh objects on every call."""
        raise NotImplementedError

    def fit_state(self, probabilities: ProbabilityFn, bundle: "DataBundle", recipe: "Recipe") -> dict[str, Any]:
        """What the task learns after training and keeps with the run and every export (e.g. thresholds)."""
        return {}

    def evaluate(
        self, probabilities: ProbabilityFn, batches: Any, class_names: list[str], state: dict[str, Any]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def format_metrics(self, metrics: dict[str, Any]) -> list[str]:
        """`tlkit evaluate`'s text."""
        return [f"{self.headline} {metrics[self.headline]:.4f}   loss {metrics['loss']:.4f}"]

    # ------------------------------------------------------------------ serving

    def archive(self, model: "keras.Model", labels: list[str], size: int, state: dict[str, Any],
                probabilities: ProbabilityFn | None = None) -> Any:
        """The SavedModel's `keras.export.ExportArchive`: signatures over raw images.

        `probabilities` (images at the model's size -> probabilities; default: the model's logits
        through `activation`) is what the signatures serve, e.g. averaged over test-time flips.
        """
        raise NotImplementedError

    def predict(self, runner: Any, files: list[tuple[int, str, bytes]], labels: list[str], meta: dict[str, Any],
                options: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Results of `tlkit predict` for decodable files `(index, path, bytes)`: index -> entry."""
        raise NotImplementedError

    def format_prediction(self, result: dict[str, Any]) -> str:
        """One `tlkit predict` text line for an image's result (errors are printed generically)."""
        shown = ", ".join(f"{p['label']} {p['score']:.3f}" for p in result["predictions"])
        return f"{result['path']}: {shown}"

    def csv_columns(self, labels: list[str], options: dict[str, Any]) -> list[str]:
        """`tlkit predict --csv` columns between `path` and `error`: here the top-k labels and scores."""
        k = min(int(options.get("top_k", 5)), len(labels))
        return [f"{kind}_{i}" for i in range(1, k + 1) for kind in ("label", "score")]

    def csv_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """An image's result as `csv_columns` cells."""
        row: dict[str, Any] = {}
        for i, p in enumerate(result["predictions"], 1):
            row[f"label_{i}"], row[f"score_{i}"] = p["label"], f"{p['score']:.6f}"
        return row

    # ------------------------------------------------------------------ report and model card

    def report_figures(self, ctx: Any) -> list[Any]:
        """The task's figures beside the curves (`ctx`: the report's context; returns `tlkit.figures.Figure`s)."""
        return []

    def card_metrics(self, metrics: dict[str, Any]) -> list[str]:
        """Markdown lines of the model card's metrics section."""
        return [f"{self.headline} **{metrics.get(self.headline, 0):.4f}**, loss {metrics.get('loss', 0):.4f}"]

    def card_output(self, meta: dict[str, Any]) -> str:
        """How to read the exported output, for the model card."""
        size = meta.get("input_size")
        return f"`[batch, {len(meta.get('labels', []))}]`" if size else ""

    def card_usage(self, meta: dict[str, Any]) -> str:
        """The Python line that turns `probs` into an answer, in the model card's examples."""
        return "print(labels[probs.argmax()], probs.max())\n"


def class_weight_list(setting: Any, names: list[str], counts: Any = None) -> list[float] | None:
    """`train.class_weights` as one weight per class (None: all equal); `auto` weighs by inverse frequency."""
    if setting == "none":
        return None
    if setting == "auto":
        counts = [float(c) for c in counts]
        total = sum(counts)
        return [total / (len(names) * c) if c else 0.0 for c in counts]
    unknown = sorted(set(setting) - set(names))
    if unknown:
        raise TlkitError(f"train.class_weights names unknown class(es) {unknown}; the classes are: {', '.join(names)}")
    return [float(setting.get(n, 1.0)) for n in names]


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def per_class_lines(per_class: dict[str, dict[str, Any]], columns: list[tuple[str, str]], first: str = "class") -> list[str]:
    """The text table of per-class metrics: `columns` are (key, format spec), each column as wide as its name."""
    width = max(len(first), *(len(n) for n in per_class))
    widths = [max(len(key), len(format(0.0 if "f" in spec else 0, spec))) for key, spec in columns]
    lines = [f"{first:<{width}}  " + "  ".join(f"{key:>{w}}" for (key, _), w in zip(columns, widths))]
    for name, row in per_class.items():
        cells = [f"{_cell(row.get(key), spec):>{w}}" for (key, spec), w in zip(columns, widths)]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return lines


def per_class_markdown(per_class: dict[str, dict[str, Any]], columns: list[tuple[str, str, str]], first: str = "class") -> list[str]:
    """The model card's per-class table: `columns` are (key, heading, format spec)."""
    if not per_class:
        return []
    lines = ["", "| " + " | ".join([first, *(h for _, h, _ in columns)]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in per_class.items():
        lines.append("| " + " | ".join([name, *(_cell(row.get(k), spec) for k, _, spec in columns)]) + " |")
    return lines
