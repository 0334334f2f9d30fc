"""Classification's recipe fields: the pooling head, label smoothing, class weights."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field

from tlkit.recipe import Head, Model, Recipe, Train


class ClassificationModel(Model):
    head: Head = Field(default_factory=Head)


class ClassificationTrain(Train):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Union[Literal["none", "auto"], dict[str, float]] = Field(
        "none", description="auto: inverse label frequency; or {class: weight}"
    )


class ClassificationRecipe(Recipe):
    task: Literal["classification"] = "classification"
    model: ClassificationModel = Field(default_factory=ClassificationModel)
    train: ClassificationTrain = Field(default_factory=ClassificationTrain)
