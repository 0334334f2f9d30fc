"""The README.md model card inside every export, rendered from its metadata.json.

A model file travels without the run directory that made it; the card tells
whoever receives it what the model is, which labels and pixels it expects, how
well it did on held-out data, how it was trained and how to call it from each
runtime, so nobody has to reverse-engineer an input tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlkit import runs

CARD = "README.md"


def write_model_card(folder: Path, meta: dict[str, Any], extra: str = "") -> Path:
    """Render the card for the export in `folder` and write it atomically; `extra` is appended (e.g. a benchmark)."""
    text = render(meta)
    if extra:
        text += "\n" + extra.strip() + "\n"
    runs.atomic_write_text(Path(folder) / CARD, text)
    return Path(folder) / CARD


def render(meta: dict[str, Any]) -> str:
    fmt = meta.get("format", "savedmodel")
    parts = [
        _overview(meta),
        _labels(meta),
        _input(meta),
        _metrics(meta),
        _recipe(meta),
        _usage(meta, fmt),
    ]
    return "\n".join(p.rstrip() + "\n" for p in parts if p)


def _overview(meta: dict[str, Any]) -> str:
    recipe = meta.get("recipe", {})
    fmt = meta.get("format", "savedmodel")
    quant = meta.get("quantize", "none")
    labels = meta.get("labels", [])
    what = {
        "savedmodel": "TensorFlow SavedModel (TF Serving layout)",
        "tflite": "TFLite flatbuffer for the LiteRT interpreter",
        "onnx": "ONNX graph for onnxruntime",
    }.get(fmt, fmt)
    lines = [
        f"# {recipe.get('name', 'tlkit model')}: {meta.get('task', 'classification')} model card",
        "",
        f"A {meta.get('task', 'classification')} model of {len(labels)} classes, made by tlkit "
        f"(transfer learning on Keras {meta.get('versions', {}).get('keras', '3')}).",
        "",
        "| | |",
        "|---|---|",
        f"| format | {what} |",
        f"| file | `{meta.get('file') or 'saved_model.pb + variables/'}` ({_bytes(meta.get('size_bytes'))}) |",
        f"| quantization | {quant}{' (integer-only input and output)' if meta.get('integer_io') else ''} |",
        f"| backbone | `{meta.get('backbone')}` ({(recipe.get('model') or {}).get('weights', '?')} weights"
        f"{_options(recipe)}) |",
        f"| input | {meta.get('input_size')} x {meta.get('input_size')} RGB |",
        f"| exported | {meta.get('exported_at', '?')} with tlkit {meta.get('versions', {}).get('tlkit', '?')}, "
        f"TensorFlow {meta.get('versions', {}).get('tensorflow', '?')} |",
    ]
    check = meta.get("verification")
    if check:
        lines.append(
            f"| verified | with {check.get('engine')} on {check.get('images')} {check.get('source')} images: "
            f"top-1 agreement with the Keras model {check.get('top1_agreement', 0):.3f}, "
            f"max probability difference {check.get('max_abs_diff', 0):.2g} (tolerance {check['tolerance']['max_abs']}) |"
        )
    if meta.get("calibration"):
        lines.append(f"| int8 calibration | {meta['calibration']['images']} images of the training split |")
    tfl = meta.get("tflite_metadata")
    if tfl:
        norm = tfl.get("input_normalization")
        lines.append(
            "| TFLite metadata | " + (
                f"name, version {tfl.get('version')}, RGB input "
                + (f"normalized with mean {norm['mean']} std {norm['std']} (raw 0-255 pixels)" if norm else "of raw uint8 pixels")
                + f", {', '.join(tfl.get('associated_files', []))} packed in the file (MediaPipe Tasks reads them) |"
                if tfl.get("written") else f"not written: {tfl.get('reason')} |"
            )
        )
    return "\n".join(lines)


def _options(recipe: dict[str, Any]) -> str:
    options = (recipe.get("model") or {}).get("options") or {}
    return "".join(f", {k}={v}" for k, v in options.items())


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _labels(meta: dict[str, Any]) -> str:
    labels = meta.get("labels", [])
    rows = "\n".join(f"| {i} | {name} |" for i, name in enumerate(labels))
    return (
        "## Labels\n\nOutput index -> class name (also in `labels.txt` beside the model, one per line, in this order"
        + (", and in the ONNX file's `metadata_props['labels']`" if meta.get("format") == "onnx" else "")
        + ").\n\n| index | label |\n|---|---|\n"
        + rows
    )


def _input(meta: dict[str, Any]) -> str:
    size = meta.get("input_size")
    fmt = meta.get("format", "savedmodel")
    out = meta.get("output", "probabilities")
    if fmt == "savedmodel":
        rows = "\n".join(f"| `{name}` | {spec} |" for name, spec in (meta.get("signatures") or {}).items())
        tta = meta.get("tta")
        averaged = (
            f" The probabilities are the mean over test-time views ({', '.join(tta['views'])}): two forward passes per image."
            if tta else ""
        )
        return (
            "## Input and output\n\nThe model decodes, resizes (bilinear, antialiased) and normalizes by itself: "
            f"send raw pixels or encoded files.{averaged}\n\n| signature | input -> outputs |\n|---|---|\n" + rows
        )
    tensors = meta.get("tensors") or {}
    inp = tensors.get("input") or {"name": "images", "dtype": "float32", "shape": [-1, size, size, 3]}
    res = tensors.get("output") or {"name": out, "dtype": "float32"}
    quant_in = inp.get("quantization")
    pixels = (
        f"uint8 pixels 0-255 (quantization scale {quant_in['scale']:.6g}, zero point {quant_in['zero_point']}: "
        "feed the pixel values as they are)"
        if quant_in
        else "float32 pixel values in [0, 255] (not normalized: normalization is inside the model)"
    )
    quant_out = res.get("quantization")
    probs = (
        f"uint8; probability = (value - {quant_out['zero_point']}) * {quant_out['scale']:.6g}"
        if quant_out
        else "float32 probabilities"
    )
    return (
        "## Input and output\n\n"
        f"- input `{inp.get('name')}`: {inp.get('dtype')} `[batch, {size}, {size}, 3]`, RGB, {pixels}. "
        f"Resize each image to {size} x {size} first (tlkit uses bilinear with antialiasing, "
        "`tf.image.resize(..., antialias=True)`); the batch dimension is dynamic.\n"
        f"- output `{res.get('name')}`: {probs}, in the order of the labels above: {_task(meta).card_output(meta)}."
    )


def _task(meta: dict[str, Any]) -> Any:
    from tlkit.tasks import get_task

    return get_task(str(meta.get("task", "classification")))


def _metrics(meta: dict[str, Any]) -> str:
    m = meta.get("metrics") or {}
    if not m:
        return "## Metrics\n\nThe run recorded no evaluation metrics."
    lines = [
        f"## Metrics on the {m.get('split', 'evaluation')} split ({m.get('num_examples', '?')} images, Keras model)",
        "",
    ]
    lines += _task(meta).card_metrics(m)
    if meta.get("quantize", "none") != "none":
        lines += ["", "These are the float model's figures; the verification line above says how closely this quantized file follows it."]
    return "\n".join(lines)


def _recipe(meta: dict[str, Any]) -> str:
    r = meta.get("recipe") or {}
    data, model, train = r.get("data") or {}, r.get("model") or {}, r.get("train") or {}
    augment = ", ".join(f"{k} {v}" for k, v in (data.get("augment") or {}).items() if v not in (0, 0.0, "none")) or "none"
    lines = [
        "## Training recipe (summary)",
        "",
        f"- data: `{data.get('source')}` (val fraction {data.get('val_fraction')}, test fraction {data.get('test_fraction')}), "
        f"augmentation: {augment}",
        f"- model: `{model.get('backbone')}` at {meta.get('input_size')} px, weights `{model.get('weights')}`"
        + (f", head dropout {model['head'].get('dropout')}" if model.get("head") else "")
        + (f", decoder {model['decoder'].get('type')} {model['decoder'].get('widths')}" if model.get("decoder") else ""),
        f"- training: batch {train.get('batch_size')}"
        + (f", label smoothing {train['label_smoothing']}" if "label_smoothing" in train else "")
        + f", seed {r.get('seed')}",
        "",
        "| stage | epochs | trains | batchnorm | optimizer | learning rate | schedule |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in train.get("stages") or []:
        lines.append(
            f"| {s.get('name')} | {s.get('epochs')} | {s.get('unfreeze')} | {s.get('batchnorm')} | {s.get('optimizer')} "
            f"| {s.get('learning_rate')} | {s.get('schedule')} |"
        )
    lines += ["", "The whole resolved recipe is in `metadata.json` (`recipe`)."]
    return "\n".join(lines)


def _usage(meta: dict[str, Any], fmt: str) -> str:
    show = _task(meta).card_usage(meta)
    if fmt == "savedmodel":
        return _tf_serving(meta) + "\n" + _savedmodel_python() + "\n" + (
            "### LiteRT\n\nThis folder is a SavedModel; for LiteRT export the run as TFLite: "
            "`tlkit export RUN_DIR --format tflite [--quantize float16|dynamic|int8]`.\n"
        )
    not_serving = (
        "## Calling it\n\n### TF Serving\n\nTF Serving serves SavedModels: export the run with "
        "`tlkit export RUN_DIR --format savedmodel` for it (signatures `serving_default`, `serving_bytes`).\n"
    )
    size = meta.get("input_size")
    prep = (
        "import numpy as np\nfrom PIL import Image\n"
        f"image = Image.open('photo.jpg').convert('RGB').resize(({size}, {size}), Image.BILINEAR)\n"
        "pixels = np.asarray(image, np.float32)[None]  # [1, H, W, 3], 0-255\n"
        "labels = open('labels.txt').read().splitlines()\n"
    )
    if fmt == "onnx":
        python = (
            "### Python (onnxruntime)\n\n```python\nimport onnxruntime as ort\n" + prep
            + "session = ort.InferenceSession('model.onnx')\n"
            "probs = session.run(None, {'images': pixels})[0][0]\n"
            + show + "```\n\n"
            "or `tlkit predict model.onnx photo.jpg` (decodes and resizes exactly as in training).\n"
        )
        lite = "### LiteRT\n\nThis is an ONNX file; for LiteRT export the run as TFLite: `tlkit export RUN_DIR --format tflite`.\n"
        return not_serving + "\n" + python + "\n" + lite
    return (
        not_serving + "\n### Python\n\nUse the LiteRT interpreter below (the same code runs on a desktop).\n\n"
        + _litert(meta, prep, show) + _mediapipe(meta)
    )


def _mediapipe(meta: dict[str, Any]) -> str:
    """MediaPipe Tasks reads the file's own metadata (labels, normalization): no pre- or post-processing to write."""
    if not (meta.get("tflite_metadata") or {}).get("written"):
        return ""
    shape = ((meta.get("tensors") or {}).get("output") or {}).get("shape") or []
    segmenter = len(shape) == 4  # [N, H, W, C]: a score per pixel; [N, C]: a score per image
    task, options, call = (
        ("ImageSegmenter", "output_category_mask=True", "segment(image).category_mask.numpy_view()  # label index per pixel")
        if segmenter
        else ("ImageClassifier", "max_results=3", "classify(image).classifications[0].categories  # category_name, score")
    )
    java = (
        ("ImageSegmenter", "ImageSegmenterOptions", ".setOutputCategoryMask(true)", "segment(image).categoryMask().get()")
        if segmenter
        else ("ImageClassifier", "ImageClassifierOptions", ".setMaxResults(3)", "classify(image).classificationResult().classifications().get(0).categories()")
    )
    return (
        "\n### MediaPipe Tasks (labels and normalization come from the file's TFLite metadata)\n\n"
        "Python (`pip install mediapipe`):\n\n```python\nimport mediapipe as mp\n"
        "from mediapipe.tasks.python import vision\nfrom mediapipe.tasks.python.core.base_options import BaseOptions\n"
        f"options = vision.{task}Options(base_options=BaseOptions(model_asset_path='model.tflite'), {options})\n"
        f"with vision.{task}.create_from_options(options) as model:\n"
        "    image = mp.Image.create_from_file('photo.jpg')\n"
        f"    result = model.{call}\n```\n\n"
        "Android (`com.google.mediapipe:tasks-vision`, the file in `src/main/assets/`):\n\n```kotlin\n"
        f"val options = {java[0]}.{java[1]}.builder()\n"
        "    .setBaseOptions(BaseOptions.builder().setModelAssetPath(\"model.tflite\").build())\n"
        f"    {java[2]}\n    .build()\n"
        f"val model = {java[0]}.createFromOptions(context, options)\n"
        f"val result = model.{java[3]}  // image: BitmapImageBuilder(bitmap).build()\n```\n"
    )


def _tf_serving(meta: dict[str, Any]) -> str:
    name = (meta.get("recipe") or {}).get("name", "model")
    return (
        "## Calling it\n\n### TF Serving\n\n"
        f"```bash\n# mount the model folder that holds this version folder (e.g. saved_models/{name}, which holds 1/, 2/, ...)\n"
        f"docker run -p 8501:8501 -p 8500:8500 -v \"$PWD/saved_models/{name}:/models/{name}\" -e MODEL_NAME={name} tensorflow/serving\n"
        f"# REST: raw pixels (serving_default) or base64-encoded files (serving_bytes)\n"
        f"curl -d '{{\"signature_name\": \"serving_default\", \"instances\": [[[[0, 0, 0], ...]]]}}' "
        f"http://localhost:8501/v1/models/{name}:predict\n"
        f"curl -d '{{\"signature_name\": \"serving_bytes\", \"instances\": [{{\"b64\": \"'$(base64 -w0 photo.jpg)'\"}}]}}' "
        f"http://localhost:8501/v1/models/{name}:predict\n```\n\n"
        "gRPC (`pip install tensorflow-serving-api`):\n\n```python\n"
        "import grpc, tensorflow as tf\n"
        "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc\n"
        "stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel('localhost:8500'))\n"
        f"request = predict_pb2.PredictRequest()\nrequest.model_spec.name = '{name}'\n"
        "request.model_spec.signature_name = 'serving_bytes'\n"
        "request.inputs['image_bytes'].CopyFrom(tf.make_tensor_proto([open('photo.jpg', 'rb').read()]))\n"
        "response = stub.Predict(request, timeout=10.0)\n"
        "print(tf.make_ndarray(response.outputs['probabilities']), response.outputs['classes'].string_val)\n```\n"
    )


def _savedmodel_python() -> str:
    return (
        "### Python (TensorFlow only, no tlkit)\n\n```python\nimport tensorflow as tf\n"
        "model = tf.saved_model.load('PATH/TO/THIS/FOLDER')\n"
        "out = model.signatures['serving_bytes'](image_bytes=tf.constant([open('photo.jpg', 'rb').read()]))\n"
        "print(out['classes'].numpy(), out['probabilities'].numpy())\n```\n\n"
        "or `tlkit predict PATH/TO/THIS/FOLDER photo.jpg`.\n"
    )


def _litert(meta: dict[str, Any], prep: str, show: str) -> str:
    feed = "pixels.astype(np.uint8)" if meta.get("integer_io") else "pixels"
    return (
        "### LiteRT (Python: `pip install ai-edge-litert`; Android/iOS: the same file with the LiteRT runtime)\n\n"
        "```python\nfrom ai_edge_litert.interpreter import Interpreter\n" + prep
        + "interpreter = Interpreter(model_path='model.tflite')\n"
        "runner = interpreter.get_signature_runner('serving_default')\n"
        f"out = runner(images={feed})['{meta.get('output', 'probabilities')}'][0]\n"
        + (
            "scale, zero = interpreter.get_output_details()[0]['quantization']\n"
            "probs = (out.astype(np.float32) - zero) * scale  # uint8 -> probabilities\n"
            if meta.get("integer_io")
            else "probs = out\n"
        )
        + show + "```\n\n"
        "or `tlkit predict model.tflite photo.jpg`. PIL's bilinear resize is close to, not identical with, "
        "tlkit's antialiased resize; for exact agreement resize with `tf.image.resize(..., antialias=True)`.\n"
    )
