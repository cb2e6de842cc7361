"""TimesNet with Anomaly Transformer's association discrepancy (Wu et al. 2023; Xu et al. 2022).

Structure (see ../shared/MODELS.md §4.1, §5):

* per-window normalisation (``WindowNorm``), token embedding (circular Conv1d C→D) = the *content* features
  ``c``; the embedded sequence is ``h = c + sinusoidal positions``;
* anomaly-attention layers on ``h``: series association ``S = softmax(QKᵀ/√d)`` per head, whose values feed the
  reconstruction path; prior association ``P``: a Gaussian kernel over ``|i − j|`` with a per-position,
  per-head scale ``σ_i = Linear(c_i)``, each row normalised to sum to one. σ reads the content features only:
  the kernel already encodes distance, and a σ that can see the absolute position can learn a scale per
  window slot instead of per observed behaviour (see ``TimesNetAD.prior_scales``). ``c`` also lies upstream
  of every attention layer, so the minimise phase reaches no layer's Q/K (with σ read from a deeper layer's
  input, as in the official code, layer l's prior gradient would flow into layer l−1's Q/K);
* TimesNet blocks at frozen periods (``models.timesnet_blocks``), LayerNorm after each, Linear(D→C) head,
  de-normalisation;
* discrepancy per step: symmetric KL between P and S rows (1e-4 inside the logs, as the official code), mean
  over heads and layers; association weight = softmax over the window's positions of ``−τ · discrepancy``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.layers import WindowNorm
from models.manifest import ScoreDefinition
from models.timesnet_blocks import TimesBlock, default_periods, top_periods
from models.tvnet import sinusoidal_positions

KL_EPS = 1e-4


@dataclass(frozen=True)
class TimesNetADConfig:
    window_length: int
    n_features: int
    d_model: int = 32
    d_ff: int = 32
    n_blocks: int = 2  # TimesBlocks (TSLib e_layers)
    n_kernels: int = 3  # inception kernels 1, 3, …, 2n−1
    top_k: int = 3  # periods kept by fit_periods
    n_attention_layers: int = 1
    n_heads: int = 4
    dropout: float = 0.1
    lambda_discrepancy: float = 3.0  # λ; 0 gives a reconstruction-only TimesNet (plain MSE score)
    temperature: float = 50.0  # τ of the association softmax over positions
    periods: tuple[int, ...] = ()  # frozen periods; () = not yet fitted (the lowest bins are used)

    def __post_init__(self) -> None:
        object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if min(self.top_k, self.n_kernels, self.n_blocks, self.n_attention_layers) < 1:
            raise ValueError("top_k, n_kernels, n_blocks and n_attention_layers must be >= 1")
        if self.lambda_discrepancy < 0 or self.temperature <= 0:
            raise ValueError("lambda_discrepancy must be >= 0 and temperature > 0")
        if len(set(self.periods)) != len(self.periods) or any(
            not 1 <= p <= self.window_length for p in self.periods
        ):
            raise ValueError(f"periods must be distinct and in [1, {self.window_length}], got {self.periods}")


def symmetric_kl(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p‖q) + KL(q‖p)`` over the last axis: rows ``[..., L]`` → ``[...]``."""
    return ((p - q) * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS))).sum(dim=-1)


class AnomalyAttention(nn.Module):
    """Self-attention returning values ``[B, L, D]``, series ``S`` and prior ``P`` associations ``[B, H, L, L]``."""

    distance2: Tensor

    def __init__(self, config: TimesNetADConfig) -> None:
        super().__init__()
        d, self.n_heads = config.d_model, config.n_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.sigma = nn.Linear(d, config.n_heads)
        steps = torch.arange(config.window_length, dtype=torch.float32)
        self.register_buffer("distance2", (steps[:, None] - steps[None, :]) ** 2, persistent=False)

    def heads(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.n_heads, -1).transpose(1, 2)  # [B, H, L, d]

    def scales(self, content: Tensor) -> Tensor:
        """σ ``[B, H, L]`` in (≈1e-5, 2) steps, squashed as the official code: 3^(sigmoid(5s) + 1e-5) − 1."""
        raw = self.sigma(content).transpose(1, 2)
        return torch.exp(math.log(3.0) * (torch.sigmoid(5.0 * raw) + 1e-5)) - 1.0

    def prior(self, content: Tensor) -> Tensor:
        """Gaussian kernel over |i − j| with scale σ_i, rows normalised (a softmax of the log-kernel)."""
        sigma = self.scales(content).unsqueeze(-1)  # [B, H, L, 1]
        return torch.softmax(-self.distance2 / (2.0 * sigma * sigma), dim=-1)

    def forward(self, h: Tensor, content: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.heads(self.query(h)), self.heads(self.key(h)), self.heads(self.value(h))
        series = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
        values = torch.matmul(series, v).transpose(1, 2).flatten(start_dim=2)  # [B, L, D]
        return self.out(values), series, self.prior(content)


class AnomalyEncoderLayer(nn.Module):
    """Anomaly attention + feed-forward, post-norm residuals (as Anomaly Transformer's EncoderLayer)."""

    def __init__(self, config: TimesNetADConfig) -> None:
        super().__init__()
        d = config.d_model
        self.attention = AnomalyAttention(config)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(), nn.Dropout(config.dropout))
        self.ff_out = nn.Linear(config.d_ff, d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: Tensor, content: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attended, series, prior = self.attention(h, content)
        h = self.norm1(h + self.dropout(attended))
        return self.norm2(h + self.dropout(self.ff_out(self.ff(h)))), series, prior


class TimesNetAD(nn.Module):
    """``forward(x: [B, L, C]) -> (reconstruction [B, L, C], association [B, L])``; samples independent.

    ``association`` sums to one over L. ``training_loss`` is the minimax; call ``fit_periods`` on the
    training windows before training (the pipeline does).
    """

    output_names = ["reconstruction", "association"]
    positions: Tensor
    head_average: Tensor

    def __init__(self, config: TimesNetADConfig) -> None:
        super().__init__()
        periods = config.periods or default_periods(config.window_length, config.top_k)
        self.config = dataclasses.replace(config, periods=periods)
        d, length = config.d_model, config.window_length
        self.norm = WindowNorm(length)
        self.token = nn.Conv1d(config.n_features, d, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.register_buffer("positions", sinusoidal_positions(length, d).transpose(1, 2), persistent=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(AnomalyEncoderLayer(config) for _ in range(config.n_attention_layers))
        self.blocks = nn.ModuleList(
            TimesBlock(length, d, config.d_ff, config.n_kernels, periods) for _ in range(config.n_blocks)
        )
        self.block_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.n_blocks))
        self.projection = nn.Linear(d, config.n_features)
        # Means over heads as a MatMul: bit-identical across batch sizes on ORT (see WindowNorm).
        self.register_buffer(
            "head_average", torch.full((config.n_heads, 1), 1.0 / config.n_heads), persistent=False
        )

    def content(self, z: Tensor) -> Tensor:
        """Content features ``[B, L, D]`` of normalised windows: the token embedding, no position in it."""
        features: Tensor = self.token(z.transpose(1, 2)).transpose(1, 2)
        return features

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Reconstruction ``[B, L, C]`` and per-layer series and prior associations ``[B, H, L, L]``."""
        z, mean, std = self.norm.normalise(x)
        content = self.content(z)
        h = self.embed_dropout(content + self.positions)  # the embedded sequence [B, L, D]
        series, priors = [], []
        for layer in self.layers:
            h, s, p = layer(h, content)
            series.append(s)
            priors.append(p)
        for block, norm in zip(self.blocks, self.block_norms, strict=True):
            h = norm(block(h))
        return self.norm.denormalise(self.projection(h), mean, std), series, priors

    def discrepancy(self, priors: list[Tensor], series: list[Tensor]) -> Tensor:
        """Per step ``[B, L]``: symmetric KL of each P row and S row, mean over heads and layers."""
        per_layer = [
            torch.matmul(symmetric_kl(p, s).transpose(1, 2), self.head_average).flatten(start_dim=1)
            for p, s in zip(priors, series, strict=True)
        ]  # each [B, L]
        total = per_layer[0]
        for layer in per_layer[1:]:
            total = total + layer
        return total / len(per_layer)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        reconstruction, series, priors = self.encode(x)
        weights = torch.softmax(-self.config.temperature * self.discrepancy(priors, series), dim=-1)
        return reconstruction, weights

    def phase_losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(minimise, maximise) losses of one forward pass of ``x: [B, L, C]``.

        minimise = rec + λ·Dis(P, S.detach()): the prior moves toward S; its discrepancy gradient reaches the
        σ projections and what feeds them (the token embedding), never a Q/K projection.
        maximise = rec − λ·Dis(P.detach(), S): the series association (Q/K and what feeds them) moves away
        from P; σ gets no gradient at all. ``rec`` is the MSE of the reconstruction, in both.
        """
        reconstruction, series, priors = self.encode(x)
        rec = F.mse_loss(reconstruction, x)
        lam = self.config.lambda_discrepancy
        pulled = self.discrepancy(priors, [s.detach() for s in series]).mean()
        pushed = self.discrepancy([p.detach() for p in priors], series).mean()
        return rec + lam * pulled, rec - lam * pushed

    def training_loss(self, x: Tensor) -> Tensor:
        """minimise + maximise. Gradients are linear, so one backward of the sum gives exactly the summed
        gradients the official solver accumulates with two backwards (the first with retain_graph) before its
        single optimiser step. The value equals 2·rec (the two discrepancy terms cancel in value, not in
        gradient, because each is cut on a different side)."""
        minimise, maximise = self.phase_losses(x)
        return minimise + maximise

    def score_definition(self) -> ScoreDefinition:
        """Association-weighted MSE, or plain MSE for λ = 0 (the graph keeps its association output, ignored)."""
        if self.config.lambda_discrepancy == 0:
            return ScoreDefinition()
        return ScoreDefinition(
            kind="association_weighted_mse",
            description=(
                "per step: softmax over the window's positions of (-temperature x association discrepancy), "
                "times the mean over sensors of the squared reconstruction error in normalised space; "
                "a sensor's contribution is its share of the squared error"
            ),
            temperature=self.config.temperature,
        )

    def prior_scales(self, x: Tensor) -> list[Tensor]:
        """σ of every layer ``[B, H, L]``: a function of the content features only, so shifting a window's
        content shifts σ with it, and the position table cannot reach it."""
        z, _, _ = self.norm.normalise(x)
        content = self.content(z)
        return [cast(AnomalyEncoderLayer, layer).attention.scales(content) for layer in self.layers]

    @torch.no_grad()
    def fit_periods(self, windows: Tensor, chunk: int = 1024) -> None:
        """Freeze the top-k periods of training windows ``[N, L, C]`` (FFT amplitude of the normalised windows,
        mean over windows and sensors) into every block and into ``self.config``."""
        amplitude = torch.zeros(self.config.window_length // 2 + 1, dtype=torch.float64)
        for start in range(0, len(windows), chunk):
            z, _, _ = self.norm.normalise(windows[start : start + chunk].float())
            amplitude += torch.fft.rfft(z, dim=1).abs().sum(dim=(0, 2)).double()
        periods = top_periods(amplitude, self.config.window_length, self.config.top_k)
        for block in self.blocks:
            cast(TimesBlock, block).set_periods(periods)
        self.config = dataclasses.replace(self.config, periods=periods)
