"""The task registry: every task tlkit can train, and the recipes validated for each.

Generic code asks this registry for a `tlkit.tasks.base.Task` and never names a
task. A task is a package under `tlkit/tasks/` whose `TASK` object is registered
below: adding one is its package plus one line in `PACKAGES`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tlkit.errors import TlkitError
from tlkit.recipe import Recipe, read_recipe_data, reference_rows, validate_recipe
from tlkit.tasks import classification, multilabel, segmentation
from tlkit.tasks.base import Task

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


PACKAGES = (classification, segmentation, multilabel)
for _package in PACKAGES:
    register_task(_package.TASK)


def get_task(recipe_or_name: "Recipe | str") -> Task:
    """The task of a recipe (or by name); an unknown name gets a did-you-mean."""
    name = recipe_or_name if isinstance(recipe_or_name, str) else recipe_or_name.task
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TlkitError(f"unknown task '{name}'{hint} Tasks: {', '.join(TASKS)}")
    return TASKS[name]


def _owner_of(key: str, task: str) -> str | None:
    """Which other task declares a recipe field, for the error about an unknown key."""
    others = [
        t.name for t in TASKS.values()
        if t.name != task and any(k == key or k.startswith(key + ".") for k in _field_keys(t.recipe))
    ]
    return f"a field of task {' and '.join(others)}, not of {task}" if others else None


def _field_keys(cls: type) -> set[str]:
    return {row.split("`")[1] for row in reference_rows(cls)}


def load_recipe(
    source: "str | Path | dict[str, Any] | Recipe | None" = None,
    overrides: "dict[str, Any] | list[str] | None" = None,
) -> Recipe:
    """Resolve a recipe from a file, a shipped name, a dict or a Recipe, apply overrides, validate it for its task.

    `overrides` is either {"train.batch_size": 16} or ["train.batch_size=16"].
    """
    data, items, origin = read_recipe_data(source, overrides)
    name = dict(items).get("task", data.get("task", "classification"))
    try:
        task = get_task(str(name))
    except TlkitError as exc:
        raise TlkitError(f"invalid recipe ({origin}): 'task' = {name!r}: {exc}") from None
    return validate_recipe(data, items, origin, task.recipe, lambda key: _owner_of(key, task.name))


def recipe_reference() -> str:
    """Markdown table of every recipe field: the shared ones, then each task's own."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    shared = reference_rows(Recipe)
    rows += shared
    seen = {row.split("`")[1] for row in shared}
    for task in TASKS.values():
        rows += reference_rows(task.recipe, skip=seen, note=f"({task.name} only)")
    return "\n".join(rows)


def load_data(recipe: Recipe, progress: bool = True, source: str | None = None) -> Any:
    """The recipe's data (or `source` instead of its own), read in its task's layout."""
    from tlkit.data.sources import load_data as load

    if source is not None:
        recipe = load_recipe(recipe, {"data.source": source})
    return load(recipe.data, recipe.seed, get_task(recipe), progress=progress)
