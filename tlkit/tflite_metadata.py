"""TFLite model metadata: what a .tflite file says about itself, so MediaPipe Tasks and Android tooling can run it.

Written with MediaPipe's own metadata writers (`mediapipe.tasks.python.metadata.metadata_writers`,
the maintained successor of tflite-support): general info (name, description, version, author,
licence), the input image (RGB, and the normalization MediaPipe applies before the model) and the
output (class scores in [0, 1] with the labels packed into the file as an associated file, or a
per-pixel score map with its label map). The kind of output follows the model's output tensor:
[N, C] is a classifier's scores, [N, H, W, C] a segmenter's; no task is named here.

The exported model normalizes its pixels itself: its float input takes raw 0..255 RGB values, so
the normalization written is mean 0, std 1 (MediaPipe then feeds raw pixels); a uint8 input
(`--integer-io`) takes raw pixels with no normalization at all.

MediaPipe 1.x wheels ship the writers but not the compiled `_pywrap_metadata_version` module they
import (it only computes the metadata's minimum parser version), so `_writers` registers a small
Python equivalent when it is missing, following the schema's own version table.
"""

from __future__ import annotations

import functools
import sys
import types
from dataclasses import dataclass
from typing import Any

LABEL_FILE = "labels.txt"  # the associated file's name inside the .tflite


@dataclass(frozen=True)
class ModelInfo:
    """The general section of the metadata."""

    name: str
    description: str
    version: str
    author: str | None = None
    license: str | None = None


def available() -> bool:
    """Whether the metadata writer (mediapipe) is installed."""
    try:
        _writers()
    except ImportError:
        return False
    return True


def add_metadata(model: bytes, info: ModelInfo, labels: list[str]) -> bytes:
    """`model` with metadata and `labels` packed in; raises ImportError without mediapipe."""
    writer_mod, _, schema = _writers()
    writer = _writer_class()(bytearray(model))
    writer.add_info(info)
    rank = len(_output_shape(model))
    float_input = writer_mod.writer_utils.get_input_tensor_types(bytearray(model))[0] == schema.TensorType.FLOAT32
    # mean 0, std 1: MediaPipe feeds raw 0..255 pixels, which the model normalizes itself
    writer.add_image_input([0.0] if float_input else [], [1.0] if float_input else [],
                           description="RGB image, raw pixel values 0..255; the model normalizes them itself")
    label_set = writer_mod.Labels().add(list(labels))
    if rank == 4:  # the scores are probabilities already: MediaPipe applies no activation
        from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter

        writer.add_custom_metadata(image_segmenter.ImageSegmenterOptionsMd(image_segmenter.Activation.NONE))
        writer.add_segmentation_output(label_set, description="per-pixel class scores in [0, 1], one channel per label")
    else:
        writer.add_classification_output(label_set, description="class scores in [0, 1], one per label")
    try:
        content, _ = writer.populate()
    finally:
        writer.close()
        del writer  # something in MediaPipe keeps this frame alive; the writer's __del__ would then run at exit
    return bytes(content)


def read_metadata(model: bytes) -> dict[str, Any]:
    """The metadata of a .tflite file as JSON (MediaPipe's displayer) plus its packed files' text."""
    import json

    from mediapipe.tasks.python.metadata import metadata

    _writers()
    displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    files = {name: displayer.get_associated_file_buffer(name).decode() for name in displayer.get_packed_associated_file_list()}
    return {"metadata": json.loads(displayer.get_metadata_json()), "files": files}


def _output_shape(model: bytes) -> list[int]:
    from mediapipe.tasks.metadata import schema_py_generated as schema

    fb = schema.Model.GetRootAsModel(model, 0)
    graph = fb.Subgraphs(0)
    return list(graph.Tensors(graph.Outputs(0)).ShapeAsNumpy())


@functools.cache
def _writer_class() -> type:
    """MediaPipe's generic writer, with the general section's version, author and licence too."""
    writer_mod, info_mod, _ = _writers()

    class Writer(writer_mod.MetadataWriter):
        def add_info(self, info: ModelInfo) -> None:
            self._general_md = info_mod.GeneralMd(
                name=info.name, version=info.version, description=info.description,
                author=info.author, licenses=info.license,
            )

        def close(self) -> None:
            """Remove the label files' temporary folder now, not in __del__ at interpreter exit."""
            self._temp_folder.cleanup()

    return Writer


def _writers() -> tuple[Any, Any, Any]:
    """(metadata_writer, metadata_info, TFLite schema) modules of MediaPipe; ImportError without it."""
    import mediapipe  # noqa: F401  (ImportError when absent)

    try:
        import mediapipe.tasks.cc.metadata.python._pywrap_metadata_version  # noqa: F401
    except ImportError:
        _register_version_module()
    from mediapipe.tasks.metadata import schema_py_generated as schema
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer

    return metadata_writer, metadata_info, schema


def _register_version_module() -> None:
    names = ["mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python",
             "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"]
    parent = sys.modules["mediapipe.tasks"]
    for name in names:
        module = sys.modules.get(name) or types.ModuleType(name)
        sys.modules[name] = module
        setattr(parent, name.rsplit(".", 1)[-1], module)
        parent = module
    parent.GetMinimumMetadataParserVersion = minimum_parser_version  # type: ignore[attr-defined]


def minimum_parser_version(buffer: bytes) -> str:
    """The oldest metadata parser that understands every field in `buffer` (the schema's version table)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(buffer), 0))
    found = [(1, 0, 0)]
    files = list(meta.associatedFiles or [])
    for graph in meta.subgraphMetadata or []:
        files += graph.associatedFiles or []
        tensors = (graph.inputTensorMetadata or []) + (graph.outputTensorMetadata or [])
        units = list(graph.inputProcessUnits or []) + list(graph.outputProcessUnits or [])
        for tensor in tensors:
            files += tensor.associatedFiles or []
            units += tensor.processUnits or []
            if tensor.content is not None and tensor.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        found += [(1, 1, 0)] * bool(graph.inputProcessUnits or graph.outputProcessUnits)
        found += [(1, 2, 0)] * bool(graph.inputTensorGroups or graph.outputTensorGroups)
        found += [(1, 5, 0)] * bool(graph.customMetadata)
    tokenizers = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                  fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                  fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}
    found += [tokenizers[u.optionsType] for u in units if u.optionsType in tokenizers]
    for f in files:
        found += [(1, 0, 1)] * (f.type == fb.AssociatedFileType.VOCABULARY)
        found += [(1, 4, 0)] * (f.type == fb.AssociatedFileType.SCANN_INDEX_FILE)
        found += [(1, 4, 1)] * (f.version is not None)
    return ".".join(str(v) for v in max(found))


def summary(model: bytes) -> dict[str, Any]:
    """What metadata.json and the model card repeat from the file's metadata."""
    read = read_metadata(model)
    meta = read["metadata"]
    graph = meta["subgraph_metadata"][0]
    image = graph["input_tensor_metadata"][0]
    norm = next((u["options"] for u in image.get("process_units", []) if u["options_type"] == "NormalizationOptions"), None)
    return {
        "name": meta.get("name"),
        "version": meta.get("version"),
        "min_parser_version": meta.get("min_parser_version"),
        "input_normalization": norm,
        "output": graph["output_tensor_metadata"][-1].get("name"),
        "associated_files": sorted(read["files"]),
    }
