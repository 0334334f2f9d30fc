"""Export formats behind one registry: how each runtime's file is written, loaded and run.

A format is an entry of `FORMATS`: a name, the model file it writes into an
export folder, the quantization modes it can hold, the optional packages it
needs, a `write(job, folder)` and a `load(path) -> Runner`. The Runner is the
runtime's own engine (TensorFlow for a SavedModel, the LiteRT interpreter for
TFLite, onnxruntime for ONNX), so `export` verifies a file with the engine that
will serve it and `predict`/`evaluate` run any export the same way.

What a task exports is its probabilities (`Task.activation`: softmax or one
sigmoid per class) and, for a SavedModel, the signatures of its own archive
(`Task.archive`); a new task gets every format that can hold its ops, and a
format that cannot raises a `TlkitError` naming the op.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from tlkit.errors import TlkitError

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
EXTRA_HINT = "pip install 'tlkit[export]'"


def inference_model(model: Any, activation: str) -> tuple[str, Any]:
    """(output name, Keras model) that every non-SavedModel format converts: the task's probabilities."""
    from tlkit.models.parts import probabilities_model

    return "probabilities", probabilities_model(model, activation)


# ----------------------------------------------------------------------------- jobs and runners


@dataclass
class ExportJob:
    """Everything a format's writer needs, prepared once by `tlkit.exporting.export_run`."""

    model: Any  # the run's Keras model (float32 [N, S, S, 3] in [0, 255] -> logits)
    inference: Any  # the same weights with the task's output (probabilities)
    output_name: str
    labels: list[str]
    size: int
    task: str = "classification"
    state: dict[str, Any] = field(default_factory=dict)  # what the task learned after training (tlkit.tasks.base)
    quantize: str = "none"
    integer_io: bool = False
    calibration: Callable[[], Iterator[np.ndarray]] | None = None  # yields float32 [1, S, S, 3] images
    bias_correction: bool = True  # int8: see tlkit.quantization
    tta: bool = False  # test-time flips averaged inside the signatures (tlkit.models.tta); formats with `tta` only
    notes: dict[str, Any] = field(default_factory=dict)  # what the writer wants recorded in metadata.json
    info: Any = None  # tlkit.tflite_metadata.ModelInfo: name, description, version, author, licence
    float_convs: int = 3  # int8 with float I/O: the first convolutions kept in float (see _convert)


class Runner:
    """A loaded export: float32 images [N, S, S, 3] in [0, 255] -> the task's output, on the format's engine."""

    size: int

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encoded(self, data: list[bytes]) -> np.ndarray:
        """Encoded image files -> outputs; decoded and resized exactly as in training."""
        import tensorflow as tf

        from tlkit.data.decode import decode_image
        from tlkit.data.pipeline import resize_image

        batch = tf.stack([resize_image(decode_image(tf.constant(b), min_size=self.size), self.size) for b in data])
        return self(batch.numpy())


class KerasRunner(Runner):
    """A run directory's Keras model served like an export (probabilities from float32 images at its size)."""

    def __init__(self, probabilities: Callable[[Any], Any], size: int) -> None:
        self.probabilities = probabilities
        self.size = size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.probabilities(np.asarray(images, np.float32)))


class TTARunner(Runner):
    """Any runner with test-time augmentation: the mean over `tlkit.models.tta.VIEWS` (outputs flipped back per pixel).

    It decodes and resizes like the other runners (`Runner.encoded`), so a SavedModel's
    `serving_bytes` is not used: every image is batched with its mirror image.
    """

    def __init__(self, runner: Runner, per_pixel: bool) -> None:
        from tlkit.models.tta import averaged

        self.runner = runner
        self.size = runner.size
        self.fn = averaged(lambda images: runner(np.asarray(images)), per_pixel)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(np.asarray(images, np.float32)))


@dataclass(frozen=True)
class Format:
    name: str
    filename: str | None  # the model file inside an export folder; None: the folder is the model (SavedModel)
    quantize: tuple[str, ...]
    modules: tuple[str, ...]  # optional packages: (import name, pip name) pairs flattened as "import:pip"
    write: Callable[[ExportJob, Path], None]
    load: Callable[[Path], Runner]
    engine: str
    description: str
    tta: bool = False  # `export --tta` can put test-time augmentation inside its signatures

    def model_path(self, folder: Path) -> Path:
        return folder / self.filename if self.filename else folder

    def holds(self, folder: Path) -> bool:
        marker = self.filename or "saved_model.pb"
        return (folder / marker).is_file()


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise TlkitError(f"unknown export format '{name}'; choose one of: {', '.join(FORMATS)}")
    return FORMATS[name]


def require(fmt: Format) -> None:
    """Fail with the install command when a format's optional packages are missing."""
    missing = []
    for entry in fmt.modules:
        module, _, pip_name = entry.partition(":")
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pip_name or module)
    if missing:
        raise TlkitError(
            f"the {fmt.name} format needs {', '.join(missing)}, which is not installed: {EXTRA_HINT}"
        )


def check_options(fmt: Format, quantize: str, integer_io: bool, tta: bool = False) -> None:
    if quantize not in QUANTIZE_MODES:
        raise TlkitError(f"unknown --quantize '{quantize}'; choose one of: {', '.join(QUANTIZE_MODES)}")
    if quantize not in fmt.quantize:
        holders = [f.name for f in FORMATS.values() if quantize in f.quantize]
        raise TlkitError(
            f"--quantize {quantize} is not available for --format {fmt.name} "
            f"(it holds: {', '.join(fmt.quantize)}); use --format {' or '.join(holders)}"
        )
    if integer_io and quantize != "int8":
        raise TlkitError("--integer-io needs --quantize int8 (integer input and output only exist in an int8 model)")
    if tta and not fmt.tta:
        holders = " or ".join(f.name for f in FORMATS.values() if f.tta)
        raise TlkitError(
            f"--tta is not available for --format {fmt.name} (its file holds one view); export --format {holders} "
            f"with --tta, or run `tlkit predict --tta` / `tlkit evaluate --tta` on the {fmt.name} file"
        )


def locate(path: str | Path) -> tuple[Format, Path]:
    """(format, model path) of an export: a .tflite/.onnx file, an export folder, or a model folder of versions."""
    path = Path(path)
    if path.is_file():
        for fmt in FORMATS.values():
            if fmt.filename and path.suffix == Path(fmt.filename).suffix:
                return fmt, path
        raise TlkitError(
            f"'{path}' is not a model file tlkit can run: expected "
            + ", ".join(Path(f.filename).suffix for f in FORMATS.values() if f.filename)
            + " or an export folder"
        )
    found = _holder(path)
    if found is None and path.is_dir():
        versions = sorted((int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
        for v in versions:
            found = _holder(path / str(v))
            if found is not None:
                break
    if found is None:
        raise TlkitError(
            f"'{path}' is not a tlkit export: expected a SavedModel folder (saved_model.pb), a .tflite or .onnx "
            "file, an export folder holding one, or a model folder with numbered versions (saved_models/NAME/1/)"
        )
    return found


def _holder(folder: Path) -> tuple[Format, Path] | None:
    if not folder.is_dir():
        return None
    for fmt in FORMATS.values():
        if fmt.holds(folder):
            return fmt, fmt.model_path(folder)
    return None


def load_runner(path: str | Path) -> tuple[Format, Path, Runner]:
    """(format, model path, runner) of any export path `locate` accepts."""
    fmt, model_path = locate(path)
    require(fmt)
    return fmt, model_path, fmt.load(model_path)


def export_folder(model_path: Path) -> Path:
    """The folder that holds labels.txt and metadata.json for a model path."""
    return model_path if model_path.is_dir() else model_path.parent


def read_labels(model_path: Path) -> list[str]:
    """labels.txt beside the model; for ONNX also the labels stored in the file itself."""
    from tlkit import runs

    folder = export_folder(model_path)
    if (folder / runs.LABELS).is_file():
        return runs.read_labels(folder)
    if model_path.suffix == ".onnx" and model_path.is_file():
        labels = onnx_metadata(model_path).get("labels")
        if labels:
            return json.loads(labels)
    raise TlkitError(f"no {runs.LABELS} beside {model_path}: keep the export folder's files together")


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Tolerance:
    """How close a format's outputs must stay to the Keras model's on the check images.

    `max_abs` / `mean_abs`: largest and average |p_format - p_keras| over all
    images and classes. Top-1 must agree on every image whose Keras margin
    between its best two classes exceeds `clear_margin` (closer calls may flip
    within the quantization noise), and on at least `min_top1` of all images.
    A broken conversion (wrong preprocessing, shuffled outputs) fails all four.
    """

    max_abs: float
    mean_abs: float
    min_top1: float
    clear_margin: float


#: measured on the flowers MobileNet (bench/export_formats.py, 864 val images): float16 max 0.031 /
#: mean 0.0013, dynamic max 0.33 / mean 0.013, int8 max 0.49 / mean 0.018; each with room to spare
TOLERANCES: dict[str, Tolerance] = {
    "none": Tolerance(max_abs=1e-3, mean_abs=1e-4, min_top1=1.0, clear_margin=2e-3),
    "float16": Tolerance(max_abs=0.06, mean_abs=0.005, min_top1=0.9, clear_margin=0.12),
    "dynamic": Tolerance(max_abs=0.75, mean_abs=0.06, min_top1=0.75, clear_margin=0.75),
    "int8": Tolerance(max_abs=0.75, mean_abs=0.08, min_top1=0.75, clear_margin=0.75),
}


def compare(expected: np.ndarray, got: np.ndarray, tolerance: Tolerance) -> dict[str, Any]:
    """Agreement figures of a format's outputs with the Keras model's; `ok` says whether it passes."""
    expected = np.asarray(expected, np.float64)
    got = np.asarray(got, np.float64)
    if expected.shape != got.shape:
        return {"ok": False, "reason": f"output shape {got.shape} differs from the Keras model's {expected.shape}"}
    diff = np.abs(expected - got)
    flat_e = expected.reshape(-1, expected.shape[-1])
    flat_g = got.reshape(-1, got.shape[-1])
    same = flat_e.argmax(-1) == flat_g.argmax(-1)
    top2 = np.sort(flat_e, axis=-1)[:, -2:] if flat_e.shape[-1] > 1 else np.zeros((len(flat_e), 2))
    clear = (top2[:, 1] - top2[:, 0]) > tolerance.clear_margin
    report = {
        "images": int(expected.shape[0]),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float(same.mean()) if same.size else 1.0,
        "tolerance": {
            "max_abs": tolerance.max_abs,
            "mean_abs": tolerance.mean_abs,
            "min_top1": tolerance.min_top1,
            "clear_margin": tolerance.clear_margin,
        },
    }
    problems = []
    if report["max_abs_diff"] > tolerance.max_abs:
        problems.append(f"max |difference| {report['max_abs_diff']:.4g} > {tolerance.max_abs}")
    if report["mean_abs_diff"] > tolerance.mean_abs:
        problems.append(f"mean |difference| {report['mean_abs_diff']:.4g} > {tolerance.mean_abs}")
    if not same[clear].all():
        problems.append(f"top-1 differs on {int((~same & clear).sum())} clear-cut image(s) (margin > {tolerance.clear_margin})")
    if report["top1_agreement"] < tolerance.min_top1:
        problems.append(f"top-1 agreement {report['top1_agreement']:.3f} < {tolerance.min_top1}")
    report["ok"] = not problems
    if problems:
        report["reason"] = "; ".join(problems)
    return report


# ----------------------------------------------------------------------------- SavedModel


class SavedModelRunner(Runner):
    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        from tlkit import runs

        self._tf = tf
        self.loaded = tf.saved_model.load(str(folder))
        self.signatures = self.loaded.signatures
        meta_path = folder / runs.EXPORT_METADATA
        meta = runs.read_json(meta_path) if meta_path.is_file() else {}
        self.size = int(meta.get("input_size", 0))
        self.output = meta.get("output", "probabilities")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        tf = self._tf
        batch = tf.cast(tf.clip_by_value(tf.round(tf.convert_to_tensor(images)), 0, 255), tf.uint8)
        return self.signatures["serving_default"](images=batch)[self.output].numpy()

    def encoded(self, data: list[bytes]) -> np.ndarray:
        """The export's own decoder (`serving_bytes`), as TF Serving would run it."""
        return self.signatures["serving_bytes"](image_bytes=self._tf.constant(data))[self.output].numpy()


def _write_savedmodel(job: ExportJob, folder: Path) -> None:
    from tlkit.models.parts import serving_probabilities
    from tlkit.models.tta import averaged
    from tlkit.tasks import get_task

    task = get_task(job.task)
    probabilities = averaged(serving_probabilities(job.model, task.activation), task.per_pixel) if job.tta else None
    task.archive(job.model, job.labels, job.size, job.state, probabilities).write_out(str(folder), verbose=False)


register_format(
    Format(
        name="savedmodel",
        filename=None,
        quantize=("none",),
        modules=(),
        write=_write_savedmodel,
        load=SavedModelRunner,
        engine="TensorFlow (tf.saved_model.load)",
        description="TF Serving layout NAME/VERSION/; signatures take raw uint8 images or encoded bytes",
        tta=True,
    )
)


# ----------------------------------------------------------------------------- TFLite (LiteRT)


def _ops_in_error(text: str) -> list[str]:
    """TensorFlow op names a converter complained about, in order, without repeats."""
    found: list[str] = []
    patterns = (
        r"'tf\.(\w+)' op is neither a custom op nor a flex op",
        r"Custom ops: ([\w, ]+)",
        r"Flex ops: ([\w, ]+)",
        r"'tfl?\.(\w+)' op .*(?:not supported|failed|is not|quantiz)",
        r"op: '?(\w+)'? is not supported",
    )
    for pattern in patterns:
        for match in re.findall(pattern, text):
            for name in str(match).split(","):
                name = name.strip()
                if name and name not in found:
                    found.append(name)
    return found


def _write_tflite(job: ExportJob, folder: Path) -> None:
    import keras
    import tensorflow as tf

    staging = folder / ".savedmodel"
    calibration: list[np.ndarray] = []
    if job.quantize == "int8":
        if job.calibration is None:
            raise TlkitError("int8 quantization needs calibration images from the run's training data")
        calibration = list(job.calibration())
    with contextlib.ExitStack() as stack:
        if calibration and job.bias_correction:
            from tlkit.quantization import bias_corrected

            job.notes["bias_corrected_layers"] = stack.enter_context(
                bias_corrected(job.inference, np.concatenate(calibration))
            )
        archive = keras.export.ExportArchive()
        archive.track(job.inference)
        archive.add_endpoint(
            "serving_default",
            lambda images: {job.output_name: job.inference(images, training=False)},
            input_signature=[tf.TensorSpec([None, job.size, job.size, 3], tf.float32, name="images")],
        )
        archive.write_out(str(staging), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(staging))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # portable: no Flex (TF) ops
    if job.quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if job.quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if job.quantize == "int8":
        converter.representative_dataset = lambda: ([x] for x in calibration)
        if job.integer_io:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
    try:
        data = _convert(converter, job, calibration, staging)
    except TlkitError:
        raise
    except Exception as exc:  # ConverterError carries the MLIR diagnostics
        ops = _ops_in_error(str(exc))
        what = f"op(s) {', '.join(ops)}" if ops else "an op"
        mode = " with integer-only (--integer-io) kernels" if job.integer_io else ""
        first = next((line for line in str(exc).splitlines() if "error" in line.lower()), str(exc).splitlines()[0] if str(exc) else "")
        raise TlkitError(
            f"TFLite cannot hold this model{mode}: {what} have no TFLite builtin kernel "
            f"({first.strip()[:200]}); export it as --format savedmodel or onnx instead"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (folder / "model.tflite").write_bytes(_with_metadata(job, data))


def _convert(converter: Any, job: ExportJob, calibration: list[np.ndarray], staging: Path) -> bytes:
    """The converter's output; for int8 with `job.float_convs`, the stem's first convolutions kept in float.

    Activation rounding costs most in the first layers (measured on flowers: conv1 alone flips 3.9% of the
    predictions); keeping the first 3 convolutions float lifts int8 agreement from 93.6% to 96.6% (2: 95.0%, 4: 95.4%).
    Uses the converter's public selective quantization (QuantizationDebugger with denylisted nodes).
    """
    import tensorflow as tf

    if job.quantize != "int8" or job.integer_io or job.float_convs < 1:
        return converter.convert()
    float_model = tf.lite.TFLiteConverter.from_saved_model(str(staging))  # the same graph, so the same tensor names
    convs = _conv_outputs(float_model.convert())
    total, kept, names = sum(n for _, n in convs), 0, []
    for name, weights in convs[: job.float_convs]:  # a stem: at most 10% of the weights (none in a tiny model)
        kept += weights
        if kept > 0.1 * total:
            break
        names.append(name)
    if not names:
        return converter.convert()
    job.notes["float_convolutions"] = len(names)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")  # the debugger's own use
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([x] for x in calibration[:4]),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names),
        )
        return debugger.get_nondebug_quantized_model()


def _conv_outputs(model: bytes) -> list[tuple[str, int]]:
    """(output tensor name, weight count) of the convolutions of a TFLite model, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.Model.GetRootAsModel(model, 0)
    graph = fb.Subgraphs(0)
    convs = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    names = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = fb.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) in convs:
            weights = int(np.prod(graph.Tensors(op.Inputs(1)).ShapeAsNumpy()))
            names.append((graph.Tensors(op.Outputs(0)).Name().decode(), weights))
    return names


def _with_metadata(job: ExportJob, data: bytes) -> bytes:
    """The model with its TFLite metadata (tlkit.tflite_metadata) when mediapipe, its writer, is installed."""
    from tlkit import tflite_metadata

    if job.info is None:
        return data
    if not tflite_metadata.available():
        job.notes["tflite_metadata"] = {"written": False, "reason": "mediapipe is not installed: " + EXTRA_HINT}
        return data
    data = tflite_metadata.add_metadata(data, job.info, job.labels)
    job.notes["tflite_metadata"] = {"written": True, "writer": "mediapipe metadata_writers", **tflite_metadata.summary(data)}
    return data


class TFLiteRunner(Runner):
    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        import os

        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count() or 1)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][1])
        self.batch = int(self.input["shape"][0])
        self.interpreter.allocate_tensors()

    def details(self) -> dict[str, Any]:
        """Input and output tensors as a caller must feed and read them."""

        signature = self.interpreter.get_signature_list().get("serving_default", {})

        def describe(d: dict[str, Any], names: list[str]) -> dict[str, Any]:
            scale, zero = d["quantization"]
            return {
                "name": names[0] if len(names) == 1 else d["name"],  # the signature's name for the tensor
                "tensor": d["name"],
                "dtype": np.dtype(d["dtype"]).name,
                "shape": [int(v) for v in d["shape_signature"]],
                "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None,
            }

        return {
            "signature": "serving_default",
            "input": describe(self.input, signature.get("inputs", [])),
            "output": describe(self.output, signature.get("outputs", [])),
        }

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        n = images.shape[0]
        if n != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [n, self.size, self.size, 3])
            self.interpreter.allocate_tensors()
            self.batch = n
        scale, zero = self.input["quantization"]
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            images = np.clip(np.round(images / scale + zero), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if np.issubdtype(out.dtype, np.integer):
            out = (out.astype(np.float32) - zero) * scale
        return out.copy()


register_format(
    Format(
        name="tflite",
        filename="model.tflite",
        quantize=QUANTIZE_MODES,
        modules=("ai_edge_litert:ai-edge-litert",),
        write=_write_tflite,
        load=TFLiteRunner,
        engine="LiteRT interpreter (ai_edge_litert.interpreter.Interpreter)",
        description="one .tflite flatbuffer; float32 [N, S, S, 3] pixels in [0, 255] (uint8 with --integer-io)",
    )
)


# ----------------------------------------------------------------------------- ONNX


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _write_onnx(job: ExportJob, folder: Path) -> None:
    import keras
    import onnx
    import tensorflow as tf

    path = folder / "model.onnx"
    try:
        # Keras's own ONNX path (tf2onnx on a concrete function, with its numpy 2 fixes)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # its `np.object` probe
            # a functional wrapper that calls the model with training=False: Keras's ONNX path calls it with
            # training unset, and a node saved with training=True (keras Resizing records one) would then put
            # every BatchNormalization after it in training mode (batch statistics) in the ONNX graph
            image = keras.Input((job.size, job.size, 3), name="images")
            frozen = keras.Model(image, job.inference(image, training=False), name="inference")
            frozen.export(
                str(path),
                format="onnx",
                verbose=False,
                input_signature=[tf.TensorSpec([None, job.size, job.size, 3], tf.float32, name="images")],
            )
    except Exception as exc:
        ops = _ops_in_error(str(exc))
        raise TlkitError(
            f"ONNX conversion (tf2onnx) failed{': op(s) ' + ', '.join(ops) if ops else ''}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}; export as --format savedmodel instead"
        ) from None
    model = onnx.load(str(path))
    unknown = sorted({n.op_type for n in model.graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if unknown:  # tf2onnx leaves ops it cannot map as they are, and only logs it
        path.unlink()
        raise TlkitError(
            f"ONNX cannot hold this model: TensorFlow op(s) {', '.join(unknown)} have no ONNX equivalent "
            "in tf2onnx; export it as --format savedmodel or tflite instead"
        )
    _rename_output(model, job.output_name)
    for tensor in (model.graph.input[0], model.graph.output[0]):
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    props = [("labels", json.dumps(job.labels)), ("task", job.task), ("input_size", str(job.size))]
    if job.state:
        props.append(("task_state", json.dumps(job.state)))
    for key, value in props:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "tlkit (tf2onnx)"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _rename_output(model: Any, name: str) -> None:
    old = model.graph.output[0].name
    if old == name:
        return
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    model.graph.output[0].name = name


class OnnxRunner(Runner):
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]
        self.size = int(self.input.shape[1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output.name], {self.input.name: np.asarray(images, np.float32)})[0]


register_format(
    Format(
        name="onnx",
        filename="model.onnx",
        quantize=("none",),
        modules=("tf2onnx:tf2onnx", "onnx:onnx", "onnxruntime:onnxruntime"),
        write=_write_onnx,
        load=OnnxRunner,
        engine="onnxruntime (InferenceSession)",
        description="one .onnx graph (tf2onnx); float32 [N, S, S, 3] pixels in [0, 255]; labels also in metadata_props",
    )
)


def batches(images: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(images), size):
        yield images[start : start + size]
