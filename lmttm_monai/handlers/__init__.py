"""Ignite handlers for the bundles' engines, laid out like ``monai.handlers``: loading weights with one-line errors,
training that survives being killed, and the official MedMNIST metrics."""

from lmttm_monai.handlers.checkpoint_loader import CheckpointError, CheckpointLoader, load_weights, state_dict_mismatch
from lmttm_monai.handlers.medmnist_metrics import MedMNISTMetric, medmnist_metric
from lmttm_monai.handlers.training_checkpoint import (
    AtomicDiskSaver,
    CheckpointSaver,
    TrainingCheckpoint,
    atomic_torch_save,
    check_schedule,
)

__all__ = [
    "AtomicDiskSaver",
    "CheckpointError",
    "CheckpointLoader",
    "CheckpointSaver",
    "MedMNISTMetric",
    "TrainingCheckpoint",
    "atomic_torch_save",
    "check_schedule",
    "load_weights",
    "medmnist_metric",
    "state_dict_mismatch",
]
