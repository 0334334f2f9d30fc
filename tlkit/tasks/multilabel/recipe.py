"""Multi-label recipe fields: where the labels are, the pooling head, the loss and the decision thresholds."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field

from tlkit.recipe import Data, Head, Model, Recipe, Train


class MultiLabelData(Data):
    labels: str = Field(
        "labels.csv",
        description="folder sources: the CSV of `path,labels` rows (a file name inside the folder, or a path); "
        "data.source may also be the CSV itself",
    )
    labels_feature: str | None = Field(None, description="TFDS sources: the sequence-of-class-labels feature; default: the first")


class MultiLabelModel(Model):
    head: Head = Field(default_factory=Head)


class MultiLabelTrain(Train):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="targets y(1-s) + s/2")
    positive_weights: Union[Literal["none", "auto"], dict[str, float]] = Field(
        "none", description="multiply each class's positive term; auto: negatives/positives of the training labels (capped)"
    )
    focal_gamma: float = Field(0.0, ge=0.0, description="0: binary cross-entropy; > 0: focal loss with this gamma")
    threshold: Union[Literal["auto"], float] = Field(
        "auto", description="decision threshold per class: auto = the best F1 on the val split, or one number in (0, 1)"
    )


class MultiLabelRecipe(Recipe):
    task: Literal["multilabel"] = "multilabel"
    data: MultiLabelData = Field(default_factory=MultiLabelData)
    model: MultiLabelModel = Field(default_factory=MultiLabelModel)
    train: MultiLabelTrain = Field(default_factory=MultiLabelTrain)
