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

from typing import List

import torch
import torch.nn as nn

from lmttm_monai.networks.blocks.token_learner import TokenLearner

__all__ = ["TokenMemory", "LinkedMemory"]

MEMORY_INITS = ("learned", "zeros")
# token learners of the read and write: the LMTTM authors' (an MLP as wide as the tokens, projected features) or
# scenic's TokenLearnerV11 as the Token Turing Machine uses it (a 64-wide bottleneck MLP, weights on the raw tokens)
TOKEN_LEARNERS = ("lmttm", "scenic")


class _ExternalMemory(nn.Module):
    """What both memories share: a fresh initial memory per volume, learned positional embeddings for the
    read and write sequences, and the read and write token learners."""

    def __init__(
        self,
        dim: int,
        initial_shape: tuple[int, ...],
        read_length: int,
        read_tokens: int,
        write_length: int,
        write_tokens: int,
        dropout: float,
        memory_init: str,
        token_learner: str = "lmttm",
        position_embedding: bool = True,
    ) -> None:
        super().__init__()
        if memory_init not in MEMORY_INITS:
            raise ValueError(f"memory_init must be one of {MEMORY_INITS}, got {memory_init!r}.")
        if token_learner not in TOKEN_LEARNERS:
            raise ValueError(f"token_learner must be one of {TOKEN_LEARNERS}, got {token_learner!r}.")
        learned = memory_init == "learned"
        initial = torch.randn(*initial_shape, dim) * 0.02 if learned else torch.zeros(*initial_shape, dim)
        self.initial = nn.Parameter(initial, requires_grad=learned)
        # Learned, created once: the authors' code drew fresh random "embeddings" inside forward, which made
        # the same input give different outputs on every call.
        # Without position_embedding (scenic's TTM has none) they stay zero and are not trained, so the state dict
        # keeps one set of keys for every option.
        def embedding(length: int) -> nn.Parameter:
            if position_embedding:
                return nn.Parameter(torch.randn(1, length, dim) * 0.02)
            return nn.Parameter(torch.zeros(1, length, dim), requires_grad=False)

        self.read_embedding = embedding(read_length)
        self.write_embedding = embedding(write_length)
        scenic = token_learner == "scenic"
        learner = {"hidden_dim": 64 if scenic else None, "feature_projection": not scenic, "dropout": dropout}
        self.reader = TokenLearner(dim, read_tokens, **learner)
        self.writer = TokenLearner(dim, write_tokens, **learner)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """The initial memory, ``[B, *initial_shape, C]``, made afresh for every forward call."""
        return self.initial.unsqueeze(0).expand([batch_size] + list(self.initial.shape))


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")


class TokenMemory(_ExternalMemory):
    """Token Turing Machine memory of ``memory_tokens`` tokens, read and rewritten whole each step.

    ``read``: ``Z = TokenLearner_r([M ; I_t] + pos)``. ``write``: ``M' = TokenLearner_m([M ; I_t ; O_t] + pos)``.

    Args:
        dim: token width ``C``.
        memory_tokens: memory size ``m``.
        input_tokens: tokens per step ``n``.
        read_tokens: tokens read per step ``r``.
        dropout: dropout inside the token learners.
        memory_init: ``"learned"`` (a learned initial memory) or ``"zeros"`` (as in scenic).
        token_learner: ``"lmttm"`` (the LMTTM authors' token learner) or ``"scenic"`` (TokenLearnerV11).
        position_embedding: add learned positional embeddings to the read and write sequences (scenic: none).

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
        token_learner: str = "lmttm",
        position_embedding: bool = True,
    ) -> None:
        _check_sizes(dim=dim, memory_tokens=memory_tokens, input_tokens=input_tokens, read_tokens=read_tokens)
        super().__init__(
            dim,
            (memory_tokens,),
            read_length=memory_tokens + input_tokens,
            read_tokens=read_tokens,
            write_length=memory_tokens + input_tokens + read_tokens,
            write_tokens=memory_tokens,
            dropout=dropout,
            memory_init=memory_init,
            token_learner=token_learner,
            position_embedding=position_embedding,
        )
        self.num_read_tokens = read_tokens

    def read(self, memory: torch.Tensor, inputs: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the read tokens ``[B, r, C]`` and the read weights ``[B, 1, r, m + n]``."""
        tokens, weights = self.reader(torch.cat([memory, inputs], dim=1) + self.read_embedding)
        return tokens, weights.unsqueeze(1)

    def write(
        self, memory: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the new memory ``[B, m, C]`` and the write weights ``[B, m, m + n + r]``."""
        return self.writer(torch.cat([memory, inputs, outputs], dim=1) + self.write_embedding)

    # The whole memory is rewritten every step, so a read or write shares nothing with the next: the cached read
    # and write are the plain ones, the memory itself being the one unit in the cache (the methods exist so that
    # one step loop, TorchScript-compiled, serves both memories).
    def read_cache(self, memory: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
        return []

    def read_cached(self, inputs: torch.Tensor, step: int, cache: List[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("TokenMemory has no cached read: the whole memory is rewritten every step.")

    def update_read_cache(self, cache: List[torch.Tensor], unit: torch.Tensor, step: int) -> List[torch.Tensor]:
        return cache

    def written_unit(self, memory: torch.Tensor, step: int) -> torch.Tensor:
        """The part of ``memory`` that the write of ``step`` replaced: all of it."""
        return memory

    def write_cache(self, memory: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
        return [memory.expand([batch_size] + list(memory.shape[1:]))]

    def write_cached(
        self, inputs: torch.Tensor, outputs: torch.Tensor, step: int, cache: List[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.write(cache[0], inputs, outputs, step)

    def update_write_cache(self, cache: List[torch.Tensor], unit: torch.Tensor, step: int) -> List[torch.Tensor]:
        return [unit]

    def memory_from_cache(self, cache: List[torch.Tensor]) -> torch.Tensor:
        return cache[0]


class LinkedMemory(_ExternalMemory):
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
        token_learner: ``"lmttm"`` or ``"scenic"``, as for :class:`TokenMemory`.
        position_embedding: as for :class:`TokenMemory`.

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
        token_learner: str = "lmttm",
        position_embedding: bool = True,
    ) -> None:
        _check_sizes(dim=dim, memory_tokens=memory_tokens, input_tokens=input_tokens, read_tokens=read_tokens)
        if memory_units < 1 or memory_tokens % memory_units != 0:
            raise ValueError(
                f"memory_units must be a positive divisor of memory_tokens, got memory_units={memory_units} "
                f"and memory_tokens={memory_tokens}."
            )
        unit_tokens = memory_tokens // memory_units
        super().__init__(
            dim,
            (memory_units, unit_tokens),
            read_length=unit_tokens + input_tokens,
            read_tokens=read_tokens,
            write_length=3 * unit_tokens + input_tokens + 3 * read_tokens,
            write_tokens=unit_tokens,
            dropout=dropout,
            memory_init=memory_init,
            token_learner=token_learner,
            position_embedding=position_embedding,
        )
        self.memory_units = memory_units
        self.unit_tokens = unit_tokens
        self.num_read_tokens = 3 * read_tokens

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
        return self._rewrite(memory, following, unit), weights

    @staticmethod
    def _rewrite(memory: torch.Tensor, index: int, unit: torch.Tensor) -> torch.Tensor:
        # rebuild instead of writing in place, so autograd keeps the old units for earlier steps
        return torch.cat([memory[:, :index], unit.unsqueeze(1), memory[:, index + 1 :]], dim=1)

    def written_unit(self, memory: torch.Tensor, step: int) -> torch.Tensor:
        """Unit ``j + 1`` of ``memory`` ``[B, k, m/k, C]``, the one the write of ``step`` replaced."""
        return memory[:, self.neighbours(step)[2]]

    # The cached read. Every term of a token learner before its softmax (LayerNorm, scoring MLP, feature
    # projection) is per token, and a unit sits at the same positions of the read sequence whichever of the three
    # neighbours it is, so a unit's terms stay valid until the unit is rewritten, and the step's input terms serve
    # all three reads. A step then scores m/k + n tokens instead of 3 (m/k + n): the outputs are the plain read's.
    def read_cache(self, memory: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
        """Read terms of every unit of ``memory`` ``[B or 1, k, m/k, C]``, for a batch of ``batch_size``:
        the scores of units ``0..k-1``, then their features. A memory of batch 1 (the initial memory, the same
        for every volume) is scored once and expanded."""
        scores, features = self.reader.token_terms(memory + self.read_embedding[:, : self.unit_tokens].unsqueeze(1))
        size = [batch_size, -1, -1]
        cache = [scores[:, i].expand(size) for i in range(self.memory_units)]
        cache += [features[:, i].expand(size) for i in range(self.memory_units)]
        return cache

    def read_cached(self, inputs: torch.Tensor, step: int, cache: List[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`read` from the cached unit terms of :meth:`read_cache`."""
        batch = inputs.shape[0]
        k = self.memory_units
        input_scores, input_features = self.reader.token_terms(inputs + self.read_embedding[:, self.unit_tokens :])
        scores: List[torch.Tensor] = []
        features: List[torch.Tensor] = []
        for unit in self.neighbours(step):
            scores.append(torch.cat([cache[unit], input_scores], dim=1))
            features.append(torch.cat([cache[k + unit], input_features], dim=1))
        # the same [3 B, ...] batch, in the same order, as the plain read: dropout draws the same mask
        tokens, weights = self.reader.pool(torch.stack(scores, 1).flatten(0, 1), torch.stack(features, 1).flatten(0, 1))
        return tokens.reshape(batch, -1, tokens.shape[-1]), weights.reshape(batch, 3, weights.shape[1], -1)

    def update_read_cache(self, cache: List[torch.Tensor], unit: torch.Tensor, step: int) -> List[torch.Tensor]:
        """After the write of ``step``: the read terms of the new unit ``j + 1`` ``[B, m/k, C]``; the others keep
        theirs."""
        index = self.neighbours(step)[2]
        scores, features = self.reader.token_terms(unit + self.read_embedding[:, : self.unit_tokens])
        cache = list(cache)
        cache[index] = scores
        cache[self.memory_units + index] = features
        return cache

    # The cached write. A unit is written once and then seen by up to three writes, each time at another place in
    # the write sequence and so with another positional embedding p: its LayerNorm and scores change, but the
    # feature projection's linear part does not, GELU(W (x + p) + b) = GELU(W x + (W p + b)). A unit's W x is
    # kept until the unit is rewritten, W p + b is computed once per forward, and a step projects m/k + n + 3 r
    # tokens (the new unit, I_t and O_t) instead of 3 m/k + n + 3 r. The cache also holds the units themselves,
    # so the step loop never indexes or rebuilds a [B, k, m/k, C] memory (whose backward would fill and add
    # whole-memory gradients at every step). The outputs equal the plain write's to float rounding.
    def write_cache(self, memory: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
        """The write's cache for ``memory`` ``[B or 1, k, m/k, C]`` and a batch of ``batch_size``: units
        ``0..k-1``, their feature projections ``W x``, then ``W p + b`` of the write's positional embeddings."""
        size = [batch_size, -1, -1]
        linear = self.writer.features.linear(memory)
        cache = [memory[:, i].expand(size) for i in range(self.memory_units)]
        cache += [linear[:, i].expand(size) for i in range(self.memory_units)]
        cache.append(self.writer.features.position(self.write_embedding))
        return cache

    def write_cached(
        self, inputs: torch.Tensor, outputs: torch.Tensor, step: int, cache: List[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`write` from the units and projections of :meth:`write_cache`; returns the new unit ``j + 1``
        ``[B, m/k, C]`` (put it in the cache with :meth:`update_write_cache`) and the write weights."""
        k = self.memory_units
        previous, current, following = self.neighbours(step)
        sequence = torch.cat([cache[current], cache[previous], cache[following], inputs, outputs], dim=1)
        linear = torch.cat(
            [cache[k + current], cache[k + previous], cache[k + following],
             self.writer.features.linear(torch.cat([inputs, outputs], dim=1))], dim=1,
        )  # fmt: skip
        scores = self.writer.score(sequence + self.write_embedding)
        return self.writer.pool(scores, self.writer.features.from_linear(linear + cache[2 * k]))

    def update_write_cache(self, cache: List[torch.Tensor], unit: torch.Tensor, step: int) -> List[torch.Tensor]:
        """After :meth:`write_cached` of ``step``: the new unit ``j + 1`` and its ``W x``; the others keep theirs."""
        index = self.neighbours(step)[2]
        cache = list(cache)
        cache[index] = unit
        cache[self.memory_units + index] = self.writer.features.linear(unit)
        return cache

    def memory_from_cache(self, cache: List[torch.Tensor]) -> torch.Tensor:
        """The memory ``[B, k, m/k, C]`` that a write cache holds."""
        return torch.stack(cache[: self.memory_units], dim=1)
