"""Export a run for a serving runtime: SavedModel, TFLite or ONNX, each verified before it is written.

Layout: OUT/VERSION/ with the model (saved_model.pb + variables/, model.tflite
or model.onnx), labels.txt, metadata.json and a README.md model card. The
SavedModel's signatures take raw images (uint8 of any size, or encoded
JPEG/PNG/GIF/BMP bytes), resize and normalize inside, and return probabilities
and class names, so a caller never needs to know how the backbone wants its
pixels. The formats themselves live in `tlkit.formats`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import keras
import numpy as np

from tlkit import model_folder, runs
from tlkit.errors import TlkitError
from tlkit.models.stages import input_size, load_keras_file, load_run_model
from tlkit.recipe import Recipe
from tlkit.tasks import get_task, load_data, load_recipe

METADATA = runs.EXPORT_METADATA


def export_of_run(run_dir: str | Path, recipe: Recipe) -> Path | None:
    """The SavedModel version folder already exported from `run_dir` (by its metadata), if any."""
    out = default_out(recipe, "savedmodel", "none", False)
    target = str(Path(run_dir).resolve())
    for version in reversed(model_folder.versions(out)):
        meta = out / str(version) / METADATA
        try:
            if runs.read_json(meta).get("run_dir") == target:
                return out / str(version)
        except (OSError, ValueError):
            continue
    return None


CHECK_IMAGES = 32  # images each export is verified on
CALIBRATION_IMAGES = 200  # default representative images for int8


def default_out(recipe: Recipe, fmt: str, quantize: str, integer_io: bool) -> Path:
    """saved_models/NAME for a SavedModel (TF Serving's model folder); NAME-FORMAT[-QUANT] for the others."""
    name = recipe.export.name or recipe.name
    if fmt != "savedmodel":
        name += f"-{fmt}" + (f"-{quantize}" if quantize != "none" else "") + ("io" if integer_io else "")
    return Path(recipe.export.dir) / name


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    version: int | None = None,
    quiet: bool = False,
    format: str = "savedmodel",
    quantize: str = "none",
    integer_io: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
    data: str | None = None,
    bundle: Any = None,
    unsafe: bool = False,
    bias_correction: bool = True,
    tta: bool = False,
    float_convs: int = 3,
) -> Path:
    """Write OUT/VERSION atomically, and only once the format's own engine agrees with the Keras model.

    `format` is a key of `tlkit.formats.FORMATS`; `quantize` (TFLite) one of
    none/float16/dynamic/int8, int8 calibrated on `calibration_images` images of
    the run's training data (`data` overrides the recipe's source; `bundle` is an
    already loaded `DataBundle`) and, unless `bias_correction=False`, with each
    layer's bias corrected for the weight rounding (`tlkit.quantization`) and, with
    float input/output, the first `float_convs` convolutions kept in float (`tlkit.formats`). A
    failed conversion or verification leaves no partial version folder. `unsafe=True`
    lets the run's .keras file run Python code it carries (Lambda layers). `tta=True` (SavedModel) serves the
    mean of each image's and its mirror image's probabilities (`tlkit.models.tta`), recorded in metadata.json.
    Returns the version folder.
    """
    from tlkit import formats

    fmt = formats.get_format(format)
    formats.check_options(fmt, quantize, integer_io, tta)
    formats.require(fmt)
    if float_convs < 0:
        raise TlkitError(f"--float-convs must be 0 or more, got {float_convs}")
    if calibration_images < 1:
        raise TlkitError(f"--calibration-images must be at least 1, got {calibration_images}")
    job = _Export(runs.require_run_dir(run_dir), fmt, quantize, integer_io, quiet)
    job.tta = tta
    out_dir = Path(out) if out is not None else default_out(job.recipe, fmt.name, quantize, integer_io)
    # the version is claimed first, so exports running at the same time never pick the same number
    with model_folder.claim_version(out_dir, version) as number:
        final = out_dir / str(number)
        job.version = str(number)
        job.prepare(data, bundle, unsafe, calibration_images, bias_correction, float_convs)
        with runs.atomic_folder(final) as tmp:  # a failure or a kill leaves no partial version folder
            job.write(tmp)
    job.say(f"exported {fmt.name} to {final}" + (f"/{fmt.filename}" if fmt.filename else ""))
    return final


class _Export:
    """One export of a run: where it goes, what it converts, and the steps that write and verify it."""

    tta = False  # test-time flips inside the signatures

    def __init__(self, run_dir: Path, fmt: Any, quantize: str, integer_io: bool, quiet: bool) -> None:
        self.run_dir, self.fmt, self.quantize, self.integer_io, self.quiet = run_dir, fmt, quantize, integer_io, quiet
        self.recipe = load_recipe(run_dir / runs.RECIPE)
        self.task = get_task(self.recipe)
        self.labels = runs.read_labels(run_dir)
        self.size = input_size(self.recipe)
        state = run_dir / runs.TASK_STATE
        self.state = runs.read_json(state) if state.is_file() else {}
        self.version = "1"  # set by export_run once the version is claimed

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def prepare(
        self, data: str | None, bundle: Any, unsafe: bool, calibration_images: int, bias_correction: bool, float_convs: int = 0
    ) -> None:
        """Load the model and the data the checks need; fail before anything is written."""
        from tlkit import formats

        self.model, unfinished = self.load_model(unsafe)
        self.images = _ExportImages(self.recipe, self.task, data, bundle, self.size, self.quiet)
        int8 = self.quantize == "int8"
        self.output_name, self.inference = formats.inference_model(self.model, self.task.activation)
        self.job = formats.ExportJob(
            model=self.model, inference=self.inference, output_name=self.output_name, labels=self.labels,
            size=self.size, task=self.task.name, state=self.state, quantize=self.quantize, integer_io=self.integer_io,
            calibration=(lambda: self.images.calibration(calibration_images)) if int8 else None,
            bias_correction=bias_correction, tta=self.tta, info=self.model_info(), float_convs=float_convs,
        )
        self.job.notes.update(unfinished)
        if int8:
            self.images.require_data()

    def load_model(self, unsafe: bool) -> tuple[Any, dict[str, Any]]:
        """The run's best checkpoint; of a run still training (no metrics.json yet), the best one written so far."""
        if (self.run_dir / runs.METRICS).is_file():
            return load_run_model(self.run_dir, unsafe=unsafe), {}
        best = self.run_dir / runs.BEST
        if not best.is_file():
            raise TlkitError(
                f"{self.run_dir} has no {runs.BEST} yet: the run has not finished its first epoch (it is still "
                "training, or stopped before); export again once an epoch has ended, or resume it with --resume"
            )
        epochs = len(runs.read_history(self.run_dir))
        self.say(f"{self.run_dir} has not finished training: exporting its best checkpoint so far ({epochs} epoch(s) done)")
        with tempfile.TemporaryDirectory() as tmp:  # a copy: a new best written meanwhile cannot change it mid-read
            copy = Path(tmp) / runs.BEST
            shutil.copyfile(best, copy)
            model = load_keras_file(copy, unsafe=unsafe)
        return model, {"training_finished": False, "epochs_done": epochs}

    def model_info(self) -> Any:
        """Name, description, version, author and licence for the formats that carry them (TFLite metadata)."""
        from tlkit.tflite_metadata import ModelInfo

        export = self.recipe.export
        description = export.description or (
            f"tlkit {self.task.name} model ({self.recipe.model.backbone} backbone, {self.size} px RGB input) "
            f"of {len(self.labels)} labels: {', '.join(self.labels[:10])}{' ...' if len(self.labels) > 10 else ''}"
        )
        return ModelInfo(name=export.name or self.recipe.name, description=description,
                         version=self.version, author=export.author, license=export.license)

    def write(self, tmp: Path) -> None:
        """Convert into `tmp`, verify with the format's engine, then labels, metadata and the model card."""
        what = self.fmt.name + (
            f" ({self.quantize}{', integer input/output' if self.integer_io else ''})" if self.quantize != "none" else ""
        )
        self.say(f"converting {self.run_dir} to {what} ...")
        started = time.perf_counter()
        self.fmt.write(self.job, tmp)
        seconds = time.perf_counter() - started
        report, runner = self.verify(tmp)
        runs.write_labels(tmp, self.labels)
        meta = self.metadata(tmp, seconds, report)
        if hasattr(runner, "details"):
            meta["tensors"] = runner.details()
        runs.write_json(tmp / METADATA, meta)
        from tlkit.model_card import write_model_card

        write_model_card(tmp, meta)

    def verify(self, tmp: Path) -> tuple[dict[str, Any], Any]:
        from tlkit import formats

        check, check_source = self.images.check(CHECK_IMAGES)
        self.say(f"verifying with {self.fmt.engine} on {len(check)} {check_source} images ...")
        if self.fmt.filename is None:  # the SavedModel runner reads metadata.json for its input size and output
            runs.write_json(tmp / METADATA, {"input_size": self.size, "output": self.output_name})
        runner = self.fmt.load(self.fmt.model_path(tmp))
        expected = np.asarray(self.expected(check))
        report = formats.compare(expected, runner(check), formats.TOLERANCES[self.quantize])
        report["source"] = check_source
        if not report["ok"]:
            raise TlkitError(
                f"the {self.fmt.name} export disagrees with the Keras model on {report['images']} {check_source} images "
                f"({report['reason']}); nothing was written"
            )
        self.say(
            f"  agrees: top-1 {report['top1_agreement']:.3f}, max |dp| {report['max_abs_diff']:.2g} "
            f"(tolerance {report['tolerance']['max_abs']})"
        )
        return {**report, "engine": self.fmt.engine}, runner

    def expected(self, images: np.ndarray) -> Any:
        """What the export must serve: the Keras model's probabilities (averaged over the TTA views with tta)."""
        call = lambda x: self.inference(x, training=False)  # noqa: E731
        if self.tta:
            from tlkit.models.tta import averaged

            call = averaged(call, self.task.per_pixel)
        return call(images)

    def metadata(self, tmp: Path, seconds: float, report: dict[str, Any]) -> dict[str, Any]:
        metrics_path = self.run_dir / runs.METRICS
        metrics = runs.read_json(metrics_path) if metrics_path.is_file() else {}
        meta = _metadata(self.recipe, self.task, self.labels, self.size, metrics, self.run_dir)
        meta.update(
            format=self.fmt.name, file=self.fmt.filename, output=self.output_name, quantize=self.quantize,
            integer_io=self.integer_io, size_bytes=_size(self.fmt.model_path(tmp)), convert_seconds=round(seconds, 2),
            verification=report, **self.job.notes,
        )
        if self.state:
            meta["task_state"] = self.state
        if self.tta:
            from tlkit.models.tta import describe

            meta["tta"] = describe()
        if self.quantize == "int8":
            meta["calibration"] = {"images": self.images.calibrated, "split": "train"}
        if self.fmt.name != "savedmodel":
            meta.pop("signatures")
        return meta


def _size(path: Path) -> int:
    """Bytes of the model itself: the file, or a SavedModel's saved_model.pb, variables/ and assets/."""
    if path.is_file():
        return path.stat().st_size
    others = {METADATA, runs.LABELS, "README.md"}
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name not in others)


class _ExportImages:
    """Images of the run's own data, loaded once and only when asked: check images and int8 calibration."""

    def __init__(self, recipe: Recipe, task: Any, data: str | None, bundle: Any, size: int, quiet: bool) -> None:
        self.recipe = load_recipe(recipe, {"data.source": data}) if data else recipe
        self.task = task
        self.bundle = bundle
        self.size = size
        self.quiet = quiet
        self.calibrated = 0
        self._error: TlkitError | None = None

    def _load(self) -> Any:
        if self.bundle is None and self._error is None:
            try:
                self.bundle = load_data(self.recipe, progress=not self.quiet)
            except TlkitError as exc:
                self._error = exc
        return self.bundle

    def _sample(self, split_name: str, n: int, seed: int) -> np.ndarray:
        """A seeded sample of a split, through the task's own evaluation pipeline (decoding only those)."""
        part = self.bundle.splits[split_name].sample(n, seed)
        batches = self.task.eval_pipeline(self.bundle.only(split_name, part), self.recipe, split_name, 64)
        return np.concatenate([images.numpy() for images, _ in batches]).astype(np.float32)

    def check(self, n: int) -> tuple[np.ndarray, str]:
        """Real images of the val split (else train); seeded noise when the run's data is gone."""
        bundle = self._load()
        if bundle is not None:
            name = "val" if "val" in bundle.splits else "train"
            return self._sample(name, n, self.recipe.seed + 1), f"{name}-split"
        rng = np.random.default_rng(0)
        noise = rng.uniform(0, 255, (n, self.size, self.size, 3))
        ramp = np.linspace(0, 255, self.size)[None, :, None, None] * rng.uniform(0, 1, (n, 1, 1, 3))
        return np.round(0.5 * noise + 0.5 * ramp.transpose(0, 2, 1, 3)).astype(np.float32), "synthetic"

    def require_data(self) -> Any:
        bundle = self._load()
        if bundle is None:
            raise TlkitError(
                f"int8 quantization calibrates on the run's training data, which cannot be loaded "
                f"({self._error}); pass --data with the training images"
            )
        return bundle

    def calibration(self, n: int) -> Iterator[np.ndarray]:
        """Representative images for int8: a seeded sample of the training split, one at a time."""
        self.require_data()
        images = self._sample("train", n, self.recipe.seed)
        self.calibrated = len(images)
        show = not self.quiet and sys.stdout.isatty()
        bar = keras.utils.Progbar(len(images), unit_name="calibration image") if show else None
        for i, image in enumerate(images):
            yield image[None]
            if bar is not None:
                bar.update(i + 1)


def _metadata(recipe: Recipe, task: Any, labels: list[str], size: int, metrics: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return {
        "task": task.name,
        "backbone": recipe.model.backbone,
        "input_size": size,
        "labels": labels,
        "metrics": metrics,
        "signatures": task.signatures,
        "recipe": recipe.to_dict(),
        "run_dir": str(run_dir.resolve()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": runs.package_versions(),
    }
