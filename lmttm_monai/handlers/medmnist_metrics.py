"""The official MedMNIST metrics (Yang et al., Scientific Data 2023) for MONAI / ignite engines.

ACC and AUC are computed by medmnist's own ``getACC`` / ``getAUC`` over the whole split: for binary tasks
ACC thresholds the class-1 probability at 0.5 and AUC is the ROC-AUC of that probability; for multi-class
tasks ACC uses the argmax and AUC is the macro one-vs-rest ROC-AUC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from monai.utils import evenly_divisible_all_gather

__all__ = ["MEDMNIST_METRICS", "MedMNISTMetric", "medmnist_metric", "probabilities_and_labels"]

MEDMNIST_METRICS = ("acc", "auc")


def medmnist_metric(name: str, y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """``name`` (``"acc"`` or ``"auc"``) of class probabilities ``y_score`` ``[N, C]`` against labels ``[N]``."""
    from medmnist.evaluator import getACC, getAUC

    if name not in MEDMNIST_METRICS:
        raise ValueError(f"metric must be one of {MEDMNIST_METRICS}, got {name!r}.")
    y_true, y_score = np.asarray(y_true).reshape(-1, 1), np.asarray(y_score)
    return float(getACC(y_true, y_score, task) if name == "acc" else getAUC(y_true, y_score, task))


def probabilities_and_labels(output: Sequence[dict] | dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output (decollated list of ``{"pred", "label"}`` or a batch dict) -> ``([B, C], [B])``."""
    if isinstance(output, dict):
        return output["pred"].detach(), output["label"].detach().reshape(-1)
    preds = torch.stack([torch.as_tensor(o["pred"]).detach() for o in output])
    labels = torch.stack([torch.as_tensor(o["label"]).detach().reshape(()) for o in output])
    return preds, labels


class MedMNISTMetric(EpochMetric):
    """Ignite metric for MONAI engines: MedMNIST ``"acc"`` or ``"auc"`` over all samples of an epoch.

    Expects ``pred`` to hold class probabilities (apply a softmax in the engine's postprocessing). Under
    ``torch.distributed`` every rank's predictions are gathered first, so the value covers the whole split even
    when the shards differ in size (ignite's own gather requires equal sizes).

    Args:
        metric: ``"acc"`` or ``"auc"``.
        task: medmnist task, ``"binary-class"`` or ``"multi-class"`` (``medmnist_info(name)["task"]``).
    """

    def __init__(self, metric: str, task: str, output_transform=probabilities_and_labels, device="cpu") -> None:
        if metric not in MEDMNIST_METRICS:
            raise ValueError(f"metric must be one of {MEDMNIST_METRICS}, got {metric!r}.")
        if task not in ("binary-class", "multi-class"):
            raise ValueError(f"task must be 'binary-class' or 'multi-class', got {task!r}.")

        def compute(y_pred: torch.Tensor, y: torch.Tensor) -> float:
            return medmnist_metric(metric, y.cpu().numpy(), y_pred.float().cpu().numpy(), task)

        super().__init__(compute, output_transform=output_transform, check_compute_fn=False, device=device)

    def compute(self) -> float:
        if not self._predictions:
            raise NotComputableError(f"{type(self).__name__} needs at least one sample before it can be computed.")
        predictions, targets = torch.cat(self._predictions), torch.cat(self._targets)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            predictions = evenly_divisible_all_gather(predictions, concat=True)
            targets = evenly_divisible_all_gather(targets, concat=True)
        return self.compute_fn(predictions, targets)
