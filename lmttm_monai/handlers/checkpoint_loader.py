"""Loading a bundle's weights with errors that say, on one line, which file is wrong and what to do about it.

MONAI's :class:`monai.handlers.CheckpointLoader` loads with ``torch.load(weights_only=True)`` and
``load_state_dict``. When the file does not fit, the user sees a ``RuntimeError`` listing every missing and
unexpected key (hundreds of names over one "line"), or torch's advice to retry with ``weights_only=False``, which
is the wrong advice for a file from someone else. :class:`CheckpointLoader` here behaves exactly as MONAI's when
loading works; when it fails, it loads the file again to find out why, and raises a :class:`CheckpointError`
that names the file and says what does not fit and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from torch import nn

from lmttm_monai.utils.errors import UserError

__all__ = ["CheckpointError", "CheckpointLoader", "load_weights", "state_dict_mismatch"]

_TRAINING_STATE_KEYS = {"trainer", "network", "optimizer"}  # lmttm_monai.handlers.training_checkpoint's checkpoint.pt


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the network it was given to; the message names it and the fix."""


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text.split(". ")[0].rstrip(".") if text else "") or type(error).__name__


def load_weights(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(path, map_location, weights_only=True)``, with a :class:`CheckpointError` that says why not.

    ``weights_only=True`` unpickles only tensors and plain containers: a checkpoint is a pickle, and unpickling
    anything else can run code that came with the file. A file that needs more (a whole ``nn.Module`` saved
    with ``torch.save(model)``, or other Python objects) is refused with what it holds and how to re-save it;
    a damaged file is refused as damaged, not with torch's advice to turn the protection off.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path}: no checkpoint there; train the bundle first, or point --ckpt_dir to the folder that holds "
            "its model.pt."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        message = " ".join(str(e).split())
        if "Weights only load failed" in message:
            held = re.search(r"GLOBAL (\S+) was not an allowed global", message)
            what = f"a pickled {held.group(1)}" if held else "Python objects beyond tensors"
            raise CheckpointError(
                f"{path} holds {what}, not only weights, and loading it would need pickle code: checkpoints are "
                "loaded with torch.load(weights_only=True), which refuses to run code from a file. If you trust "
                "where it came from, re-save only its weights: torch.save(torch.load(path, weights_only=False)"
                ".state_dict(), 'model.pt') for a saved module."
            ) from e
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_sentence(e)}).") from e
    except Exception as e:  # a truncated zip, a file of another kind: torch's reasons vary
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {_first_sentence(e)}); it is "
            "damaged or not a checkpoint: copy it again, or train again."
        ) from e


def state_dict_mismatch(module: nn.Module, state: Mapping, strict: bool = True) -> str | None:
    """What keeps ``module.load_state_dict(state, strict)`` from working, in one sentence, or ``None``.

    Counts the checkpoint's keys the network lacks and the network's keys the checkpoint lacks (only when
    ``strict``, as ``load_state_dict``), and the tensors whose shapes differ, each with one example.
    """
    own = module.state_dict()
    parts = []
    if strict:
        unexpected = [k for k in state if k not in own]
        missing = [k for k in own if k not in state]
        if unexpected:
            parts.append(
                f"{len(unexpected)} of its {len(state)} tensors are not in the network (e.g. {unexpected[0]!r})"
            )
        if missing:
            parts.append(f"{len(missing)} of the network's {len(own)} tensors are missing (e.g. {missing[0]!r})")
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        key, theirs, ours = shapes[0]
        parts.append(
            f"{len(shapes)} tensors have another shape (e.g. {key!r}: {theirs} in the file, {ours} in the network)"
        )
    return "; ".join(parts) or None


class CheckpointLoader(_MonaiCheckpointLoader):
    """MONAI's :class:`monai.handlers.CheckpointLoader` (same arguments, same loading), with one-line errors.

    When loading fails, the file is loaded again (on the CPU) to say why, as a :class:`CheckpointError`:

    - no file at ``load_path``;
    - a file ``torch.load(weights_only=True)`` refuses: damaged, or needing pickle code (a whole module saved);
    - not a state dict, or a training checkpoint (``checkpoint.pt``) instead of the model's weights;
    - a state dict of another network or configuration: how many keys are missing or unexpected and how many
      tensors have other shapes, each with an example (with ``strict=False`` only shapes count, as in torch).

    Any other failure (one the file is not to blame for) is raised as it was.
    """

    def __call__(self, engine) -> None:
        try:
            super().__call__(engine)
        except Exception as error:
            self._explain(error)
            raise

    def _explain(self, error: Exception) -> None:
        """Raise a :class:`CheckpointError` saying why ``self.load_path`` did not load, when it is to blame."""
        path = os.fspath(self.load_path)
        checkpoint = load_weights(path, map_location="cpu")
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(
                f"{path} holds a {type(checkpoint).__name__}, not a state dict of the network's weights; save it "
                "with torch.save(model.state_dict(), 'model.pt')."
            ) from error
        name = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and name not in checkpoint:
            if _TRAINING_STATE_KEYS <= set(checkpoint):
                raise CheckpointError(
                    f"{path} is a full training checkpoint (network, optimizer, trainer), not a model's weights: "
                    "give the model.pt next to it, or torch.save(checkpoint['network'], 'model.pt')."
                ) from error
            checkpoint = {name: checkpoint}  # a bare state dict, as MONAI reads it for a single object
        for key, target in self.load_dict.items():
            if not isinstance(target, nn.Module):
                continue
            wrapped = isinstance(target, (nn.DataParallel, nn.parallel.DistributedDataParallel))
            module = target.module if wrapped else target  # saved unwrapped, as MONAI's savers do
            if key not in checkpoint:
                held = ", ".join(map(str, checkpoint))
                raise CheckpointError(f"{path} has no {key!r} entry; it holds {held}.") from error
            state = checkpoint[key]
            if not isinstance(state, Mapping):
                raise CheckpointError(
                    f"{path}: its {key!r} entry is a {type(state).__name__}, not a state dict of weights."
                ) from error
            problem = state_dict_mismatch(module, state, strict=self.strict)
            if problem:
                raise CheckpointError(
                    f"{path} does not fit the network {type(module).__name__}: {problem}. It was trained with "
                    "another network or configuration: use the configs (and overlays) it was trained with, or "
                    "train this one."
                ) from error
