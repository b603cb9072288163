"""TokenLearner: a learned, input-dependent summary of a token set.

Ryoo et al., "TokenLearner: Adaptive Space-Time Tokenization for Videos", NeurIPS 2021, in the form used by
the Token Turing Machine (Ryoo et al., CVPR 2023) and LMTTM (Wei et al., CMPB 2025) for memory read and write.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TokenLearner"]


class _FeatureProjection(nn.Sequential):
    """``GELU(Linear(C, C))``, the LMTTM authors' feature projection, with its part that is linear in the tokens.

    ``GELU(W (x + p) + b) = GELU(W x + (W p + b))``: a memory can keep ``W x`` of a unit that several writes see at
    different positions ``p`` (see :meth:`LinkedMemory.write_cached`).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.GELU())

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``W x``, without the bias."""
        return F.linear(x, self[0].weight)

    def position(self, embedding: torch.Tensor) -> torch.Tensor:
        """``W p + b`` of positional embeddings ``p``."""
        return self[0](embedding)

    def from_linear(self, linear: torch.Tensor) -> torch.Tensor:
        """The features of ``x + p`` from :meth:`linear` of ``x`` plus :meth:`position` of ``p``."""
        return self[1](linear)


class _RawFeatures(nn.Identity):
    """No feature projection (scenic's TokenLearnerV11), with the methods of :class:`_FeatureProjection`."""

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def position(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding

    def from_linear(self, linear: torch.Tensor) -> torch.Tensor:
        return linear


class TokenLearner(nn.Module):
    """Summarise ``N`` input tokens into ``num_output_tokens`` tokens.

    Each output token is a convex combination of the (projected) input tokens; the combination weights come
    from a small MLP on the layer-normalised inputs followed by a softmax over the ``N`` input tokens, so the
    same module accepts any ``N``.

    Args:
        dim: token width ``C``.
        num_output_tokens: number of summary tokens ``S``.
        hidden_dim: width of the MLP that scores the tokens (defaults to ``dim``).
        feature_projection: project the summarised features with ``GELU(Linear(C, C))`` first, as in the
            LMTTM authors' variant; ``False`` weights the raw inputs, as in scenic's TokenLearnerV11.
        dropout: dropout on the summary tokens.

    Shapes:
        ``forward(x)`` with ``x`` of shape ``[B, N, C]`` returns ``(tokens, weights)``: ``tokens`` of shape
        ``[B, S, C]`` and ``weights`` of shape ``[B, S, N]`` (each row sums to one).
    """

    def __init__(
        self,
        dim: int,
        num_output_tokens: int,
        hidden_dim: int | None = None,
        feature_projection: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1 or num_output_tokens < 1:
            raise ValueError(f"dim and num_output_tokens must be positive, got {dim} and {num_output_tokens}.")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}.")
        hidden_dim = dim if hidden_dim is None else hidden_dim
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim}.")
        self.dim = dim
        self.score = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_output_tokens)
        )
        self.features = _FeatureProjection(dim) if feature_projection else _RawFeatures()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != self.dim:
            raise ValueError(
                "TokenLearner expects tokens of shape [B, N, {}] with N >= 1, got {}.".format(self.dim, list(x.shape))
            )
        return self.pool(*self.token_terms(x))

    def token_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-token part: scores ``[..., N, S]`` and features ``[..., N, C]`` of tokens ``[..., N, C]``.

        Each token's terms depend on that token alone, so terms computed for parts of a sequence and
        concatenated along ``N`` equal the terms of the whole sequence: a memory can compute them once for a
        part that several reads share (see :meth:`LinkedMemory.read_cached`).
        """
        return self.score(x), self.features(x)

    def pool(self, scores: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence part: softmax of ``scores`` ``[B, N, S]`` over the ``N`` tokens, then the weighted sum of
        ``features`` ``[B, N, C]``; returns ``(tokens [B, S, C], weights [B, S, N])``."""
        weights = scores.transpose(1, 2).softmax(dim=-1)  # [B, S, N]: softmax over the input tokens
        tokens = self.dropout(torch.bmm(weights, features))
        return tokens, weights
