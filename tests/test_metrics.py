"""The bundle's metrics are the official MedMNIST ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from medmnist import Evaluator

from lmttm_monai.data import load_medmnist3d
from lmttm_monai.handlers.medmnist_metrics import MedMNISTMetric, medmnist_metric


def _run_metric(metric: MedMNISTMetric, scores: np.ndarray, labels: np.ndarray, batch: int = 32) -> float:
    """Feed decollated engine outputs through ``metric`` as a MONAI evaluator would."""
    batches = [(scores[i : i + batch], labels[i : i + batch]) for i in range(0, len(labels), batch)]

    def step(engine, data):
        s, l = data
        return [{"pred": torch.as_tensor(p), "label": torch.as_tensor(t)} for p, t in zip(s, l)]

    engine = Engine(step)
    metric.attach(engine, "value")
    return engine.run(batches).metrics["value"]


def test_acc_and_auc_match_medmnist_evaluator_on_the_real_test_split(medmnist_dir):
    _, labels = load_medmnist3d("adrenalmnist3d", "test", 28, medmnist_dir, download=False)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(labels), 2)) + 1.5 * np.eye(2)[labels] * (rng.random(len(labels))[:, None] > 0.3)
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    official = Evaluator("adrenalmnist3d", "test", size=28, root=str(medmnist_dir)).evaluate(scores)
    auc = _run_metric(MedMNISTMetric("auc", "binary-class"), scores.astype(np.float32), labels)
    acc = _run_metric(MedMNISTMetric("acc", "binary-class"), scores.astype(np.float32), labels)
    assert auc == pytest.approx(official.AUC, abs=1e-6)
    assert acc == pytest.approx(official.ACC, abs=1e-12)
    assert 0.5 < auc < 1.0  # the synthetic scores carry signal, so the value is not a constant


def test_multiclass_auc_is_macro_one_vs_rest_and_acc_is_argmax():
    labels = np.array([0, 1, 2, 2, 1, 0])
    scores = np.array(
        [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2], [0.3, 0.6, 0.1], [0.3, 0.3, 0.4]]
    )
    from sklearn.metrics import roc_auc_score

    expected_auc = np.mean([roc_auc_score(labels == c, scores[:, c]) for c in range(3)])
    assert medmnist_metric("auc", labels, scores, "multi-class") == pytest.approx(expected_auc)
    assert medmnist_metric("acc", labels, scores, "multi-class") == pytest.approx(4 / 6)


def test_unknown_metric_or_task_is_rejected():
    with pytest.raises(ValueError, match="metric must be one of"):
        MedMNISTMetric("f1", "binary-class")
    with pytest.raises(ValueError, match="task must be"):
        MedMNISTMetric("auc", "multi-label, binary-class")


def _ranked_metric(rank: int, world: int, init_file: str, scores: np.ndarray, labels: np.ndarray, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shard = slice(0, 5) if rank == 0 else slice(5, None)  # 5 and 4 samples: uneven on purpose
        value = _run_metric(MedMNISTMetric("auc", "binary-class"), scores[shard], labels[shard], batch=2)
        Path(out, f"rank{rank}.txt").write_text(repr(value))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metric_under_ddp_covers_every_sample_when_shards_are_uneven(tmp_path):
    import torch.multiprocessing as mp

    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1])
    scores = np.stack([1 - np.linspace(0.1, 0.9, 9), np.linspace(0.1, 0.9, 9)], 1).astype(np.float32)
    scores[[0, 4]] = scores[[4, 0]]  # not perfectly separable, so the value depends on every sample
    expected = medmnist_metric("auc", labels, scores, "binary-class")
    mp.spawn(_ranked_metric, args=(2, str(tmp_path / "init"), scores, labels, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert float((tmp_path / f"rank{rank}.txt").read_text()) == pytest.approx(expected)
    assert expected != pytest.approx(medmnist_metric("auc", labels[:5], scores[:5], "binary-class"))
