"""One resolver for what a command may be pointed at: a run directory, an export, a .keras file, a recipe, a backbone.

`evaluate`, `predict`, `extract`, `inspect` and `benchmark` each accept some of these;
`resolve_target(path, allowed)` decides which one a path is, the same way everywhere,
and fails with one line naming what was allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tlkit import runs
from tlkit.errors import TlkitError

KINDS = {
    "run": "a run directory (it has recipe.yaml)",
    "export": "an export (SavedModel folder, .tflite/.onnx file, or a model folder of numbered versions)",
    "keras": "a .keras file",
    "recipe": "a recipe (.yaml or a shipped name)",
    "backbone": "a backbone name",
}
METADATA = runs.EXPORT_METADATA


@dataclass
class Target:
    kind: str
    source: str
    path: Path | None = None  # run dir, model path of an export, .keras file, recipe file
    fmt: Any = None  # export format (tlkit.formats.Format)
    _meta: dict[str, Any] | None = None

    def meta(self) -> dict[str, Any]:
        """An export's metadata.json ({} if the folder has none)."""
        if self._meta is None:
            from tlkit.formats import export_folder

            file = export_folder(self.path) / METADATA if self.path is not None else None
            self._meta = runs.read_json(file) if file is not None and file.is_file() else {}
        return self._meta

    def recipe(self) -> Any:
        from tlkit.tasks import load_recipe

        if self.kind == "run":
            return load_recipe(self.path / runs.RECIPE)
        if self.kind == "export":
            meta = self.meta()
            if "recipe" not in meta:
                from tlkit.formats import export_folder

                raise TlkitError(f"{export_folder(self.path)} has no {METADATA}: keep the export folder's files together")
            return load_recipe(meta["recipe"])
        if self.kind == "recipe":
            return load_recipe(str(self.source))
        raise TlkitError(f"{self.source} ({KINDS[self.kind]}) carries no recipe")

    def labels(self) -> list[str]:
        if self.kind == "run":
            return runs.read_labels(self.path)
        from tlkit.formats import read_labels

        return read_labels(self.path)

    def task_state(self) -> dict[str, Any]:
        """What the task learned after training (e.g. thresholds), from the run or the export's metadata."""
        if self.kind == "run":
            file = self.path / runs.TASK_STATE
            return runs.read_json(file) if file.is_file() else {}
        return dict(self.meta().get("task_state") or {})

    def task_name(self) -> str:
        """The task a run or an export was trained for (an ONNX file alone carries it in its metadata)."""
        if self.kind == "export" and "task" not in self.meta() and self.path.suffix == ".onnx":
            from tlkit.formats import onnx_metadata

            return onnx_metadata(self.path).get("task", "classification")
        if self.kind == "export" and "recipe" not in self.meta():
            return str(self.meta().get("task", "classification"))
        return self.recipe().task

    def keras_model(self, unsafe: bool = False) -> Any:
        from tlkit.models.stages import load_keras_file, load_run_model

        if self.kind == "run":
            return load_run_model(self.path, unsafe=unsafe)
        if self.kind == "keras":
            return load_keras_file(self.path, unsafe=unsafe)
        raise TlkitError(f"{self.source} ({KINDS[self.kind]}) is not a Keras model")

    def runner(self, unsafe: bool = False) -> Any:
        """The export on its own engine (`tlkit.formats.Runner`), or a run's Keras model served the same way."""
        if self.kind == "run":
            from tlkit.formats import KerasRunner
            from tlkit.models.stages import input_size
            from tlkit.tasks import get_task

            recipe = self.recipe()
            return KerasRunner(self.probability_fn(get_task(recipe).activation, unsafe=unsafe), input_size(recipe))
        from tlkit.formats import require

        require(self.fmt)
        return self.fmt.load(self.path)

    def probability_fn(self, activation: str, unsafe: bool = False) -> Callable[[Any], Any]:
        """images -> probabilities: the Keras model of a run, or an export on its own engine."""
        import numpy as np

        if self.kind == "export":
            runner = self.runner()
            return lambda images: runner(np.asarray(images))
        from tlkit.models.parts import probability_fn

        return probability_fn(self.keras_model(unsafe=unsafe), activation)


def resolve_target(target: str | Path, allowed: tuple[str, ...]) -> Target:
    """Which kind of thing `target` is, among `allowed` (see KINDS); one clear line when it is none of them."""
    path = Path(target)
    reasons: list[TlkitError] = []
    for kind in allowed:
        try:
            found = _FINDERS[kind](path, str(target))
        except TlkitError as exc:  # it looked like this kind, but is broken: the most useful message
            reasons.append(exc)
            continue
        if found is not None:
            return found
    if reasons and len(allowed) == 1:
        raise reasons[0]
    wanted = "; or ".join(KINDS[k] for k in allowed)
    hint = ""
    if "backbone" in allowed and not path.exists():
        from tlkit.models.backbones import get_backbone

        try:
            get_backbone(str(target))
        except TlkitError as exc:
            hint = f" ({exc})"
    elif not path.exists():
        hint = " (no such file or folder)"
    raise TlkitError(f"'{target}' is not {wanted}{hint}")


def _run(path: Path, source: str) -> Target | None:
    if path.is_dir() and (path / runs.RECIPE).is_file():
        return Target("run", source, path)
    return None


def _export(path: Path, source: str) -> Target | None:
    from tlkit.formats import locate

    if not path.exists() or (path.is_dir() and (path / runs.RECIPE).is_file()):
        return None
    fmt, model_path = locate(path)  # an existing path that is no export: locate says what it expected
    return Target("export", source, model_path, fmt)


def _keras(path: Path, source: str) -> Target | None:
    if path.suffix != ".keras":
        return None
    if not path.is_file():
        raise TlkitError(f"model file '{path}' does not exist")
    return Target("keras", source, path)


def _recipe(path: Path, source: str) -> Target | None:
    from tlkit.recipe import resolve_recipe_path

    if path.suffix in (".yaml", ".yml"):
        return Target("recipe", source, resolve_recipe_path(source))
    try:
        return Target("recipe", source, resolve_recipe_path(source))
    except TlkitError:
        return None


def _backbone(path: Path, source: str) -> Target | None:
    from tlkit.models.backbones import get_backbone

    try:
        get_backbone(source)
    except TlkitError:
        return None
    return Target("backbone", source)


_FINDERS: dict[str, Callable[[Path, str], Target | None]] = {
    "run": _run,
    "export": _export,
    "keras": _keras,
    "recipe": _recipe,
    "backbone": _backbone,
}
