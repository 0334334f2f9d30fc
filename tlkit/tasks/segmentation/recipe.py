"""Segmentation's recipe fields: mask values, the decoder, the loss mix; validated for segmentation runs only."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from tlkit.recipe import Data, Model, Recipe, Section, Train


class Masks(Section):
    """Segmentation masks: which pixel value means which class, and which values to leave out."""

    values: dict[int, str] | None = Field(
        None,
        description="mask pixel value -> class name (several values may share a name); class order: by first value. "
        "Default: binary {0: background, 255: foreground} for folders, the dataset's own for builtin:shapes",
    )
    ignore: list[int] = Field(default_factory=list, description="mask values left out of loss and metrics")
    images_dir: str = Field("images", description="folder sources: subfolder of images")
    masks_dir: str = Field("masks", description="folder sources: subfolder of masks, matched to images by file stem")
    feature: str | None = Field(None, description="TFDS sources: the mask feature; default: the first image feature after the image")

    @field_validator("values")
    @classmethod
    def _values(cls, value: Any) -> Any:
        if value is not None:
            if not value:
                raise ValueError("masks.values needs at least one value: name pair")
            bad = [v for v in value if not 0 <= v <= 255]
            if bad:
                raise ValueError(f"mask values are 8-bit: {bad} is outside 0..255")
        return value

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, value: Any) -> Any:
        bad = [v for v in value if not 0 <= v <= 255]
        if bad:
            raise ValueError(f"mask values are 8-bit: {bad} is outside 0..255")
        return value


class Decoder(Section):
    """Segmentation head: turns backbone features (and skips) into per-pixel logits at the input size."""

    type: str = Field("unet", description="a decoder registry name: unet, fpn")
    widths: list[int] = Field(
        default_factory=lambda: [128, 64, 32, 16],
        min_length=1,
        description="unet: filters of the up blocks, deepest first; fpn: [pyramid width, head width]",
    )
    upsample: Literal["bilinear", "transpose"] = "bilinear"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if any(w <= 0 for w in value):
            raise ValueError("decoder widths must be positive")
        return value


class Loss(Section):
    """Segmentation loss = weighted sum; classification uses cross-entropy (with label_smoothing)."""

    cross_entropy: float = Field(1.0, ge=0.0)
    dice: float = Field(0.0, ge=0.0)
    focal: float = Field(0.0, ge=0.0)
    focal_gamma: float = Field(2.0, ge=0.0)

    @model_validator(mode="after")
    def _some(self) -> "Loss":
        if self.cross_entropy + self.dice + self.focal <= 0:
            raise ValueError("at least one of cross_entropy, dice, focal needs a positive weight")
        return self


class SegmentationData(Data):
    masks: Masks = Field(default_factory=Masks, description="which mask value means which class")


class SegmentationModel(Model):
    decoder: Decoder = Field(default_factory=Decoder)


class SegmentationTrain(Train):
    loss: Loss = Field(default_factory=Loss, description="weighted sum of per-pixel losses")
    class_weights: Union[Literal["none"], dict[str, float]] = Field(
        "none", description="{class: weight} scales each pixel's loss by its true class"
    )


class SegmentationRecipe(Recipe):
    task: Literal["segmentation"] = "segmentation"
    data: SegmentationData = Field(default_factory=SegmentationData)
    model: SegmentationModel = Field(default_factory=SegmentationModel)
    train: SegmentationTrain = Field(default_factory=SegmentationTrain)
