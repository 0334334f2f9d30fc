"""tlkit: a good image model from your own images, fast.

The Python API mirrors the CLI: `tlkit.finetune(recipe, **overrides)`,
`tlkit.evaluate(target)`, `tlkit.export(run_dir)`, `tlkit.predict(export, images)`.
Names resolve lazily so `import tlkit` (and `tlkit --help`) stays quick.
"""

from __future__ import annotations

from typing import Any

from tlkit import tflogs

tflogs.quiet_level()  # TF_CPP_MIN_LOG_LEVEL=2 unless set (or TLKIT_TF_LOGS asks for TensorFlow's lines)

__version__ = "0.1.0"

_API = {
    "finetune": ("tlkit.train", "finetune"),
    "evaluate": ("tlkit.evaluation", "evaluate"),
    "export": ("tlkit.exporting", "export_run"),
    "predict": ("tlkit.prediction", "predict"),
    "extract": ("tlkit.extraction", "extract"),
    "write_report": ("tlkit.report", "write_report"),  # not "report": the module tlkit.report would shadow it
    "inspect": ("tlkit.inspection", "inspect_model"),
    "doctor": ("tlkit.diagnosis.doctor", "doctor"),
    "benchmark": ("tlkit.benchmarking", "benchmark"),  # module named like exporting/evaluation: tlkit.benchmark stays the function
    "load_recipe": ("tlkit.tasks", "load_recipe"),
    "Recipe": ("tlkit.recipe", "Recipe"),
    "TlkitError": ("tlkit.errors", "TlkitError"),
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tlkit' has no attribute '{name}'")
