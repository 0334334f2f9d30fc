"""Metrics of a trained model on a split: the same numbers for a run directory or an export of any format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlkit.errors import TlkitError
from tlkit.tasks import get_task, load_data


def evaluate(
    target: str | Path,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 32,
    quiet: bool = True,
    unsafe: bool = False,
    tta: bool = False,
) -> dict[str, Any]:
    """Metrics of a run directory or an export on a split of `data` (default: the run's own data).

    `unsafe=True` lets a run's .keras file run Python code it carries (Lambda layers). `tta=True` scores
    the mean of each image's and its mirror image's probabilities (`tlkit.models.tta`; an export
    with TTA inside already serves that mean); the metrics then carry `"tta": true`.
    """
    from tlkit.targets import resolve_target

    found = resolve_target(target, ("run", "export"))
    recipe, labels, state = found.recipe(), found.labels(), found.task_state()
    task = get_task(recipe)
    fn = found.probability_fn(task.activation, unsafe=unsafe)
    if tta and not found.meta().get("tta"):
        from tlkit.models.tta import averaged

        fn = averaged(fn, task.per_pixel)
    bundle = load_data(recipe, progress=not quiet, source=data)
    if bundle.class_names != labels:
        raise TlkitError(
            f"the data's classes {bundle.class_names} differ from the model's labels {labels}; "
            "evaluate needs data with the same class folders/names"
        )
    split = split or ("test" if "test" in bundle.splits else "val" if "val" in bundle.splits else "train")
    if split not in bundle.splits:
        raise TlkitError(f"split '{split}' is not available; this data has: {', '.join(bundle.splits)}")
    metrics = task.evaluate(fn, task.eval_pipeline(bundle, recipe, split, batch_size), labels, state)
    if data is None:  # the run's own splits: its best checkpoint was picked on one of them
        metrics = {"selected_on": "val" if task.monitor(recipe).startswith("val_") else "train", **metrics}
    return {"split": split, **metrics, **({"tta": True} if tta or found.meta().get("tta") else {})}

