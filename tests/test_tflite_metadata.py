"""TFLite metadata in every .tflite export, read back, and the exports run by MediaPipe Tasks as tlkit predicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_recipe

pytest.importorskip("ai_edge_litert", reason="needs the export extra: pip install 'tlkit[export]'")
pytest.importorskip("mediapipe", reason="TFLite metadata and MediaPipe Tasks need mediapipe: pip install 'tlkit[export]'")


def _run(tmp_path_factory, tfds_dir, task: str, **extra):
    import tlkit

    root = tmp_path_factory.mktemp(task)
    recipe = tiny_recipe(tfds_dir, root, task=task, export={"dir": str(root / "saved_models"), "author": "Ada",
                                                             "license": "Apache-2.0"}, **extra)
    return tlkit.finetune(recipe, run_dir=root / "run", quiet=True, export=False).run_dir


@pytest.fixture(scope="module")
def classifier(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, tfds_dir):
    return _run(tmp_path_factory, tfds_dir, "segmentation", model={"decoder": {"widths": [16, 8]}},
                train={"stages": [{"name": "train", "epochs": 1, "learning_rate": 0.01}]})


def _val_images(run_dir: Path, n: int = 24) -> np.ndarray:
    """uint8 [n, S, S, 3] val images at the model's size, through the run's own evaluation pipeline."""
    from tlkit import runs
    from tlkit.tasks import get_task, load_data, load_recipe

    recipe = load_recipe(run_dir / runs.RECIPE)
    task = get_task(recipe)
    bundle = load_data(recipe)
    part = bundle.splits["val"].sample(n, 0)
    batches = task.eval_pipeline(bundle.only("val", part), recipe, "val", 64)
    return np.concatenate([x.numpy() for x, _ in batches]).round().clip(0, 255).astype(np.uint8)


def _pngs(images: np.ndarray, folder: Path) -> list[Path]:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        path.write_bytes(tf.io.encode_png(image).numpy())
    return paths


def _mp_image(image: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))


@pytest.mark.parametrize("quantize, integer_io, min_agreement", [("none", False, 0.99), ("int8", True, 0.95)])
def test_mediapipe_image_classifier_agrees_with_tlkit_predict(classifier, tmp_path, quantize, integer_io, min_agreement):
    import tlkit
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    from tlkit.tflite_metadata import read_metadata

    folder = tlkit.export(classifier, format="tflite", quantize=quantize, integer_io=integer_io, quiet=True)
    model = folder / "model.tflite"
    labels = (folder / "labels.txt").read_text().split()
    read = read_metadata(model.read_bytes())
    meta = read["metadata"]
    assert (meta["name"], meta["version"], meta["author"], meta["license"]) == ("tiny", folder.name, "Ada", "Apache-2.0")
    assert "classification" in meta["description"] and labels[0] in meta["description"]
    image_md = meta["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert image_md["content"]["content_properties"]["color_space"] == "RGB"
    if integer_io:  # uint8 pixels go in as they are: no normalization, range 0..255
        assert "process_units" not in image_md and image_md["stats"] == {"max": [255.0], "min": [0.0]}
    else:  # the model normalizes raw 0..255 floats itself
        assert image_md["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}
    assert read["files"]["labels.txt"].split("\n") == labels
    assert json.loads((folder / "metadata.json").read_text())["tflite_metadata"]["written"]

    images = _val_images(classifier)
    expected = [r["predictions"][0]["label"] for r in tlkit.predict(model, _pngs(images, tmp_path))]
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model)), max_results=len(labels))
    with vision.ImageClassifier.create_from_options(options) as mp_classifier:
        results = [mp_classifier.classify(_mp_image(image)).classifications[0].categories for image in images]
    assert sorted(c.category_name for c in results[0]) == sorted(labels)
    got = [categories[0].category_name for categories in results]
    assert np.mean([a == b for a, b in zip(got, expected)]) >= min_agreement, (got, expected)


def test_mediapipe_image_segmenter_masks_equal_tlkit_predict(segmenter):
    import tensorflow as tf
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    import tlkit
    from tlkit.formats import load_runner
    from tlkit.tasks.segmentation.serving import segmenter as tlkit_segmenter
    from tlkit.tflite_metadata import read_metadata

    folder = tlkit.export(segmenter, format="tflite", quiet=True)
    model = folder / "model.tflite"
    labels = (folder / "labels.txt").read_text().split()
    read = read_metadata(model.read_bytes())
    output = read["metadata"]["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert read["files"][output["associated_files"][0]["name"]].split("\n") == labels
    graph = read["metadata"]["subgraph_metadata"][0]
    assert graph["custom_metadata"][0]["name"] == "SEGMENTER_METADATA"  # activation NONE: the scores are probabilities
    assert read["metadata"]["min_parser_version"] == "1.5.0"  # custom metadata needs a 1.5 parser

    images = _val_images(segmenter, 8)
    segment = tlkit_segmenter(load_runner(model)[2])  # what `tlkit predict` runs on a TFLite export
    expected = np.stack([segment(tf.io.encode_png(image).numpy()) for image in images])
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(model)),
                                           output_category_mask=True, output_confidence_masks=False)
    with vision.ImageSegmenter.create_from_options(options) as mp_segmenter:
        got = np.stack([mp_segmenter.segment(_mp_image(image)).category_mask.numpy_view()[..., 0].copy()
                        for image in images])  # copied: the view's memory goes with the result
    assert got.shape == expected.shape
    assert np.mean(got == expected) >= 0.98


@pytest.mark.parametrize("quantize", ["float16", "dynamic", "int8"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_every_quantization_carries_the_metadata(quantize, activation, tmp_path):
    """float16/dynamic/int8 and sigmoid (multi-label) scores: same metadata, on a converter-only model (fast)."""
    import keras
    import tensorflow as tf

    from tlkit.tflite_metadata import ModelInfo, add_metadata, read_metadata

    image = keras.Input((8, 8, 3))
    scores = keras.layers.Dense(3, activation=activation)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image)))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, scores))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        rng = np.random.default_rng(0)
        converter.representative_dataset = lambda: ([rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)] for _ in range(4))
    model = add_metadata(converter.convert(), ModelInfo("m", "d", "3"), ["a", "b", "c"])
    read = read_metadata(model)
    output = read["metadata"]["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert output["stats"] == {"max": [1.0], "min": [0.0]}  # the score range
    assert read["files"]["labels.txt"] == "a\nb\nc"
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_content=model).allocate_tensors()  # the interpreter still loads the file


def test_minimum_parser_version_follows_the_fields_used():
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    from tlkit.tflite_metadata import minimum_parser_version

    def version(graph: "fb.SubGraphMetadataT") -> str:
        meta = fb.ModelMetadataT()
        meta.subgraphMetadata = [graph]
        builder = flatbuffers.Builder(0)
        builder.Finish(meta.Pack(builder), b"M001")
        return minimum_parser_version(builder.Output())

    graph = fb.SubGraphMetadataT()
    assert version(graph) == "1.0.0"
    graph.customMetadata = [fb.CustomMetadataT()]  # what MediaPipe's segmenter options use
    assert version(graph) == "1.5.0"
