"""External token memories of the Token Turing Machine family: read and write.

- :class:`TokenMemory`: the Token Turing Machine memory (Ryoo et al., "Token Turing Machines", CVPR 2023):
  one block of ``m`` tokens, read whole and rewritten whole at every step.
- :class:`LinkedMemory`: the linked memory of LMTTM (Wei et al., "LMTTM-VMI: Linked Memory Token Turing
  Machine for 3D volumetric medical image classification", CMPB 262:108640, 2025): ``k`` units of ``m / k``
  tokens on a ring with a pointer ``j``; a step reads units ``j - 1, j, j + 1`` (the tri-temporal view),
  writes one new unit into ``j + 1`` and the pointer moves on.

Both keep no state between calls: the memory tensor is an argument and a return value, and its initial value
(learned, or zeros) is produced afresh by :meth:`initial_memory` for every volume. The pointer is the step
index modulo ``k``, so it starts at unit 0 for every volume.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmttm_monai.networks.blocks.token_learner import TokenLearner

__all__ = ["TokenMemory", "LinkedMemory"]

MEMORY_INITS = ("learned", "zeros")


def _check_common(dim: int, memory_tokens: int, input_tokens: int, read_tokens: int, memory_init: str) -> None:
    for name, value in (
        ("dim", dim),
        ("memory_tokens", memory_tokens),
        ("input_tokens", input_tokens),
        ("read_tokens", read_tokens),
    ):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")
    if memory_init not in MEMORY_INITS:
        raise ValueError(f"memory_init must be one of {MEMORY_INITS}, got {memory_init!r}.")


def _positional_embedding(num_tokens: int, dim: int) -> nn.Parameter:
    # Learned, created once: the authors' code drew fresh random "embeddings" inside forward, which made
    # the same input give different outputs on every call.
    return nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)


class TokenMemory(nn.Module):
    """Token Turing Machine memory of ``memory_tokens`` tokens, read and rewritten whole each step.

    ``read``: ``Z = TokenLearner_r([M ; I_t] + pos)``. ``write``: ``M' = TokenLearner_m([M ; I_t ; O_t] + pos)``.

    Args:
        dim: token width ``C``.
        memory_tokens: memory size ``m``.
        input_tokens: tokens per step ``n``.
        read_tokens: tokens read per step ``r``.
        dropout: dropout inside the token learners.
        memory_init: ``"learned"`` (a learned initial memory) or ``"zeros"`` (as in scenic).

    Shapes: memory ``[B, m, C]``; inputs ``[B, n, C]``; read ``[B, r, C]``; outputs ``[B, r, C]``.
    """

    def __init__(
        self,
        dim: int,
        memory_tokens: int,
        input_tokens: int,
        read_tokens: int = 8,
        dropout: float = 0.0,
        memory_init: str = "learned",
    ) -> None:
        super().__init__()
        _check_common(dim, memory_tokens, input_tokens, read_tokens, memory_init)
        self.memory_tokens = memory_tokens
        self.num_read_tokens = read_tokens
        self.learn_initial_memory = memory_init == "learned"
        self.initial = nn.Parameter(torch.randn(memory_tokens, dim) * 0.02, requires_grad=self.learn_initial_memory)
        if not self.learn_initial_memory:
            nn.init.zeros_(self.initial)
        self.read_embedding = _positional_embedding(memory_tokens + input_tokens, dim)
        self.write_embedding = _positional_embedding(memory_tokens + input_tokens + read_tokens, dim)
        self.reader = TokenLearner(dim, read_tokens, dropout=dropout)
        self.writer = TokenLearner(dim, memory_tokens, dropout=dropout)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        return self.initial.unsqueeze(0).expand(batch_size, -1, -1)

    def read(self, memory: torch.Tensor, inputs: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the read tokens ``[B, r, C]`` and the read weights ``[B, 1, r, m + n]``."""
        tokens, weights = self.reader(torch.cat([memory, inputs], dim=1) + self.read_embedding)
        return tokens, weights.unsqueeze(1)

    def write(
        self, memory: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the new memory ``[B, m, C]`` and the write weights ``[B, m, m + n + r]``."""
        return self.writer(torch.cat([memory, inputs, outputs], dim=1) + self.write_embedding)


class LinkedMemory(nn.Module):
    """LMTTM linked memory: ``memory_units`` units of ``memory_tokens // memory_units`` tokens on a ring.

    At step ``t`` the pointer is ``j = t mod k``.

    - read: for each of the units ``j - 1, j, j + 1`` (wrapping), ``TokenLearner_r([unit ; I_t] + pos)``; the
      three summaries together are ``P_t`` (``3 r`` tokens). One token learner is shared by the three units.
    - write: ``TokenLearner_{m/k}([unit_j ; unit_{j-1} ; unit_{j+1} ; I_t ; O_t] + pos)`` becomes unit ``j + 1``;
      the other units are kept.

    With fewer than three units the neighbours coincide (``k = 1`` reads one unit three times).

    Args:
        dim: token width ``C``.
        memory_tokens: total memory size ``m``; must be divisible by ``memory_units``.
        memory_units: number of linked units ``k``.
        input_tokens: tokens per step ``n``.
        read_tokens: tokens read per unit ``r``.
        dropout: dropout inside the token learners.
        memory_init: ``"learned"`` (a learned initial memory) or ``"zeros"``.

    Shapes: memory ``[B, k, m / k, C]``; inputs ``[B, n, C]``; read ``[B, 3 r, C]``; outputs ``[B, 3 r, C]``.
    """

    def __init__(
        self,
        dim: int,
        memory_tokens: int,
        memory_units: int,
        input_tokens: int,
        read_tokens: int = 8,
        dropout: float = 0.0,
        memory_init: str = "learned",
    ) -> None:
        super().__init__()
        _check_common(dim, memory_tokens, input_tokens, read_tokens, memory_init)
        if memory_units < 1 or memory_tokens % memory_units != 0:
            raise ValueError(
                f"memory_units must be a positive divisor of memory_tokens, got memory_units={memory_units} "
                f"and memory_tokens={memory_tokens}."
            )
        self.memory_units = memory_units
        self.unit_tokens = memory_tokens // memory_units
        self.num_read_tokens = 3 * read_tokens
        self.learn_initial_memory = memory_init == "learned"
        self.initial = nn.Parameter(
            torch.randn(memory_units, self.unit_tokens, dim) * 0.02, requires_grad=self.learn_initial_memory
        )
        if not self.learn_initial_memory:
            nn.init.zeros_(self.initial)
        self.read_embedding = _positional_embedding(self.unit_tokens + input_tokens, dim)
        self.write_embedding = _positional_embedding(3 * self.unit_tokens + input_tokens + 3 * read_tokens, dim)
        self.reader = TokenLearner(dim, read_tokens, dropout=dropout)
        self.writer = TokenLearner(dim, self.unit_tokens, dropout=dropout)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        return self.initial.unsqueeze(0).expand(batch_size, -1, -1, -1)

    def neighbours(self, step: int) -> tuple[int, int, int]:
        """Units ``(j - 1, j, j + 1)`` around the pointer ``j = step mod k``."""
        k = self.memory_units
        j = step % k
        return (j - 1) % k, j, (j + 1) % k

    def read(self, memory: torch.Tensor, inputs: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``P_t`` ``[B, 3 r, C]`` and the read weights ``[B, 3, r, m / k + n]`` (units j-1, j, j+1)."""
        batch = inputs.shape[0]
        previous, current, following = self.neighbours(step)
        units = torch.stack([memory[:, previous], memory[:, current], memory[:, following]], dim=1)  # [B, 3, m/k, C]
        # the three [unit ; I_t] sequences go through the shared token learner as one batch of 3 B
        sequences = torch.cat([units, inputs.unsqueeze(1).expand(-1, 3, -1, -1)], dim=2).flatten(0, 1)
        tokens, weights = self.reader(sequences + self.read_embedding)
        return tokens.reshape(batch, -1, tokens.shape[-1]), weights.reshape(batch, 3, weights.shape[1], -1)

    def write(
        self, memory: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the memory with unit ``j + 1`` rewritten ``[B, k, m / k, C]`` and the write weights
        ``[B, m / k, 3 m / k + n + 3 r]``."""
        previous, current, following = self.neighbours(step)
        sequence = torch.cat([memory[:, current], memory[:, previous], memory[:, following], inputs, outputs], dim=1)
        unit, weights = self.writer(sequence + self.write_embedding)
        # rebuild instead of writing in place, so autograd keeps the old units for earlier steps
        memory = torch.cat([memory[:, :following], unit.unsqueeze(1), memory[:, following + 1 :]], dim=1)
        return memory, weights
