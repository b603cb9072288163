"""Training that survives being killed: a full checkpoint every epoch, written atomically, and ``resume``.

Every bundle's ``train#handlers`` holds a :class:`TrainingCheckpoint`. At the end of each epoch (after validation,
so the best metric is current) it writes ``ckpt_dir/checkpoint.pt``: network, optimizer, learning-rate scheduler,
AMP scaler, the trainer's epoch and iteration, the validator's best metric and the best-model saver's record. With
``resume`` true, a rerun loads it and continues with the next epoch; a run that had already finished says so and
stops. The best-validation model (``model.pt``) is written by :class:`CheckpointSaver`, MONAI's, made atomic.

Why a resumed run equals an uninterrupted one: everything random in an epoch (the shuffled order, the random
augmentation of the data transforms, dropout) is drawn from generators reseeded at the start of each epoch from
``seed + epoch``, and each epoch starts a fresh pass over the data loader. So epoch ``e`` draws the same numbers
whether the process ran epochs ``1 .. e-1`` itself or loaded them from the checkpoint; an epoch cut short by a
crash is redone from its start.

Writes are atomic: the file is written under a temporary name in the same folder, flushed to disk, then renamed
over the old one, so a crash leaves either the old complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver
from monai.utils import set_determinism

from lmttm_monai.utils.errors import UserError
from lmttm_monai.utils.outputs import as_bool, atomic_path

__all__ = [
    "AtomicDiskSaver", "CheckpointSaver", "TrainingCheckpoint", "atomic_torch_save", "check_schedule", "CHECKPOINT_NAME",
]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.pt"
logger = logging.getLogger(__name__)


def _whole(value: object, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        also = " (or null: the whole data set)" if allow_none else ""
        raise UserError(f"{key} must be a positive whole number{also}, got {value!r}.")


def check_schedule(epochs: object, epoch_length: object = None, val_interval: object = 1) -> None:
    """Refuse a training schedule that ignite would misread: ``--epochs 1.5`` trains 2 epochs there, and
    ``--epochs abc`` ends in a comparison error that names neither the key nor the value; and one whose
    ``val_interval`` exceeds ``epochs``, which would never validate and so never keep a ``model.pt``."""
    _whole(epochs, "epochs")
    _whole(epoch_length, "epoch_length", allow_none=True)
    _whole(val_interval, "val_interval")
    if val_interval > epochs:
        # validation is what keeps model.pt: with none, training would end with no model to evaluate or infer with
        raise UserError(
            f"val_interval {val_interval} is more than epochs {epochs}: no validation would run and no model.pt "
            f"would be kept; pass --val_interval {epochs} or less."
        )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class AtomicDiskSaver(BaseSaveHandler):
    """An ignite save handler that writes each checkpoint atomically, optionally always under one file name."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname, self.filename = os.fspath(dirname), filename
        os.makedirs(self.dirname, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        atomic_torch_save(checkpoint, os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        path = os.path.join(self.dirname, self.filename or filename)
        if self.filename is None and os.path.exists(path):  # a fixed name is replaced, never removed
            os.remove(path)


class CheckpointSaver(_MonaiCheckpointSaver):
    """MONAI's :class:`monai.handlers.CheckpointSaver` (same arguments), each file written atomically.

    MONAI writes in place (``atomic=False``, to keep group-readable permissions); a run killed while it writes
    ``model.pt`` would leave a truncated best model. This saver writes under a temporary name and renames, with
    the permissions a plain ``open`` would give.
    """

    def __init__(self, save_dir: str, save_dict: dict, *args: Any, **kwargs: Any) -> None:
        # ignite's DiskSaver (built by super) checks that save_dir exists, then creates it without exist_ok, on rank 0
        # only; under torchrun another rank's AtomicDiskSaver can create it between the two (FileExistsError).
        # Creating it here first, on every rank, leaves ignite nothing to create.
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(save_dir, save_dict, *args, **kwargs)
        fixed = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attribute, filename in fixed.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename)

    def key_metric_record(self) -> dict | None:
        """What the best-model checkpoint remembers (the best score so far), for a resumed run."""
        return None if self._key_metric_checkpoint is None else self._key_metric_checkpoint.state_dict()


class TrainingCheckpoint:
    """Full training state at every epoch end, ``resume`` from it, and per-epoch seeding (module docstring).

    Args:
        ckpt_dir: folder of ``checkpoint.pt`` (the bundle's ``ckpt_dir``, next to ``model.pt``).
        network, optimizer: the trained objects.
        seed: the bundle's ``seed``; epoch ``e`` draws its random numbers from ``seed + e``.
        resume: load ``checkpoint.pt`` when training starts and continue after its epoch.
        lr_scheduler: saved and restored when given.
        validator: the evaluator run by ``ValidationHandler``; its best metric (and that of a
            :class:`CheckpointSaver` among its handlers) is saved and restored, so the best model is only
            replaced by a better one after a resume.
        filename: the checkpoint's file name.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        seed: int,
        resume: bool | str = False,
        lr_scheduler: Any = None,
        validator: Engine | None = None,
        filename: str = CHECKPOINT_NAME,
    ) -> None:
        resume = as_bool(resume, "resume")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"seed must be an integer, got {seed!r}.")
        self.path = os.path.join(os.fspath(ckpt_dir), filename)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.seed, self.resume, self.validator = seed, resume, validator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._load)
        engine.add_event_handler(Events.EPOCH_STARTED, self._seed_epoch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _module(self) -> torch.nn.Module:
        return getattr(self.network, "module", self.network)  # DDP wraps the network; save the bare one

    def _best_saver(self) -> CheckpointSaver | None:
        if self.validator is None:
            return None
        for handlers in self.validator._event_handlers.values():  # ignite keeps no public registry of handlers
            for function, *_ in handlers:
                saver = getattr(function, "__self__", None)
                if isinstance(saver, CheckpointSaver) and saver._key_metric_checkpoint is not None:
                    return saver
        return None

    def state_dict(self, engine: Engine) -> dict:
        state = {
            "trainer": engine.state_dict(),
            "network": self._module().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "seed": self.seed,
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if self.validator is not None:
            state["best_metric"] = float(self.validator.state.best_metric)
            state["best_metric_epoch"] = int(self.validator.state.best_metric_epoch)
        saver = self._best_saver()
        if saver is not None:
            state["best_saver"] = saver.key_metric_record()
        return state

    def _save(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return  # one writer; every rank holds the same weights after DDP's all-reduce
        atomic_torch_save(self.state_dict(engine), self.path)

    def _load(self, engine: Engine) -> None:
        if not self.resume:
            return
        if not os.path.isfile(self.path):
            logger.warning("resume: no checkpoint at %s yet, so training starts at epoch 1", self.path)
            return
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{self.path}: cannot be resumed from, it is not a readable checkpoint ({e}).") from e
        missing = {"trainer", "network", "optimizer"} - set(state)
        if missing:
            raise UserError(f"{self.path}: not a training checkpoint of this project (no {', '.join(sorted(missing))}).")
        planned = engine.state.max_epochs
        try:
            self._module().load_state_dict(state["network"])
        except RuntimeError as e:
            raise UserError(f"{self.path}: its network does not fit this config ({str(e).splitlines()[0]})") from e
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        engine.load_state_dict(state["trainer"])
        engine.state.max_epochs = planned  # the config's epochs: a resumed run may be given more
        if self.validator is not None and "best_metric" in state:
            self.validator.state.best_metric = state["best_metric"]
            self.validator.state.best_metric_epoch = state["best_metric_epoch"]
        saver = self._best_saver()
        if saver is not None and state.get("best_saver"):
            saver._key_metric_checkpoint.load_state_dict(state["best_saver"])
        done = engine.state.epoch
        if planned is not None and done >= planned:
            logger.info(
                "resume: training had already finished (epoch %d of %d in %s); nothing to run. "
                "Give more --epochs to train on.", done, planned, self.path,
            )  # fmt: skip
        else:
            logger.info("resume: continuing after epoch %d of %s from %s", done, planned, self.path)

    def _seed_epoch(self, engine: Engine) -> None:
        epoch_seed = self.seed + engine.state.epoch
        set_determinism(seed=epoch_seed)
        loader = engine.state.dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, epoch_seed)  # the random transforms' own generators (the workers reseed from torch)
        engine.set_data(loader)  # a fresh pass: the order is drawn now, from this epoch's seed
