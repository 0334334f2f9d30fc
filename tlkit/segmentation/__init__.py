"""The segmentation task: losses and metrics, evaluation, serving and mask outputs."""
