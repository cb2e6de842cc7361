"""TVNet (Li, Li, Diao, ICLR 2025) as a window reconstruction model.

Structure, following the paper rather than the official code's defects (see ../shared/MODELS.md §1):

* per-window normalisation (mean, biased std over time; undone after the head);
* token embedding (circular Conv1d C→D) plus a fixed sinusoidal position embedding;
* 3D embedding: each embedding channel is cut into N = L/S overlapping patches of length P = 2S by a learned
  Conv1d(1→P, kernel P, stride S); the patch axis is placed by a *permute*, so it really indexes patches,
  and each patch is split into its even and odd positions: ``[B, D, N, 2, P/2]``;
* 3D blocks with a per-sample, per-patch dynamic convolution: the weight for patch n of sample b is
  ``α[b, :, n] · W`` with ``α = 1 + F_intra(v_intra) + F_inter(v_inter)``; ``v_intra`` pools inside each
  patch, ``v_inter`` pools across patches. As in the official block, the dynamic weight is applied by a conv
  followed by a transposed conv with the same weight. Since scaling a kernel by α scales that conv's output
  channel (and a transposed conv's input channel), the block equals
  ``conv_transpose(α² ⊙ conv(x, W), W)`` with *static* W: exact, per-sample, O(B), and clean to export;
* head: flatten ``[B, D, N·P]`` → Linear(N·P → L) over time → Linear(D → C) → de-normalise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.layers import LevelAutoencoder, WindowNorm


@dataclass(frozen=True)
class TVNetConfig:
    window_length: int
    n_features: int
    d_model: int = 32
    patch_stride: int = 10  # S; the patch length is P = 2S
    n_blocks: int = 3
    # Over (patch, odd/even, position in half-patch). 1 on the patch axis = the paper's per-patch ("per-frame")
    # conv; patches talk through α and the head. (3, 3, 3) also mixes neighbours but costs 3.3× on ORT CPU.
    kernel_size: tuple[int, int, int] = (1, 3, 3)
    dropout: float = 0.1
    # Per-window normalisation (the paper's RevIN-style step). It makes the model blind to a level shift that
    # fills the whole window (an anomaly lasting longer than L can look like that); False feeds
    # the globally standardised window, clipped to ±input_clip so that a sensor that was flat in training
    # cannot feed the network values in the thousands (EVALUATION.md measures both). The error is still
    # taken against the unclipped input, so such a sensor still scores high.
    window_norm: bool = True
    input_clip: float = 10.0
    # Width of the level autoencoder's bottleneck (models.layers.LevelAutoencoder); 0: none. With it, the
    # level restored after the head is the one the channels' levels together predict, not the window's own,
    # so a level unlike training shows in the error while the network still sees normalised windows.
    level_bottleneck: int = 0

    def __post_init__(self) -> None:
        if self.patch_stride < 1 or self.window_length % self.patch_stride:
            raise ValueError(
                f"window_length ({self.window_length}) must be a multiple of patch_stride ({self.patch_stride})"
            )
        if self.window_length // self.patch_stride < 2:
            raise ValueError("window_length must hold at least two patches")
        if self.level_bottleneck < 0 or (self.level_bottleneck and not self.window_norm):
            raise ValueError(
                "level_bottleneck must be >= 0, and needs window_norm (it predicts the window's level)"
            )
        if any(k % 2 == 0 or k < 1 for k in self.kernel_size):
            raise ValueError(f"kernel_size entries must be odd, got {self.kernel_size}")

    @property
    def patch_length(self) -> int:
        return 2 * self.patch_stride

    @property
    def n_patches(self) -> int:
        return self.window_length // self.patch_stride


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """Fixed position embedding ``[1, D, L]`` (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table.T.unsqueeze(0)


class PatchEmbedding3D(nn.Module):
    """``[B, D, L]`` → ``[B, D, N, 2, P/2]``: learned patches of every embedding channel, odd/even split."""

    def __init__(self, config: TVNetConfig) -> None:
        super().__init__()
        self.patch_length = config.patch_length
        self.pad = config.patch_length - config.patch_stride
        self.project = nn.Conv1d(1, config.patch_length, config.patch_length, stride=config.patch_stride)

    def forward(self, x: Tensor) -> Tensor:
        batch, d_model, length = x.shape
        series = x.reshape(batch * d_model, 1, length)  # every embedding channel as its own series
        series = F.pad(series, (0, self.pad), mode="replicate")
        patches = self.project(series)  # [B·D, P, N]
        patches = patches.reshape(batch, d_model, self.patch_length, -1).permute(0, 1, 3, 2)  # [B, D, N, P]
        return torch.stack((patches[..., 0::2], patches[..., 1::2]), dim=3)  # [B, D, N, 2, P/2]


class DynamicBlock3D(nn.Module):
    """Residual 3D block whose conv weight varies per sample and per patch: ``[B, D, N, 2, P/2]`` in and out."""

    def __init__(self, config: TVNetConfig) -> None:
        super().__init__()
        d = config.d_model
        padding = tuple(k // 2 for k in config.kernel_size)
        self.weight = nn.Parameter(torch.empty(d, d, *config.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.padding = padding
        # Kernel 1 on the patch axis: each patch is a frame convolved on its own, so the 3D conv is a 2D conv
        # over [B·N, D, 2, P/2] (ORT CPU: 6.3 → 2.75 ms per op at batch 64, bench/model_throughput.py).
        self.per_patch = config.kernel_size[0] == 1
        self.d_model, self.half_patch = d, config.patch_length // 2
        self.intra = nn.Sequential(nn.Conv1d(d, d, 3, padding=1), nn.BatchNorm1d(d), nn.ReLU())
        self.inter = nn.Sequential(nn.Conv1d(d, d, 1), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)

    def modulation(self, x: Tensor) -> Tensor:
        """α: ``[B, D, N]`` = 1 + F_intra(pool inside patches) + F_inter(pool across patches)."""
        v_intra = x.mean(dim=(3, 4))  # [B, D, N]
        v_inter = v_intra.mean(dim=2, keepdim=True)  # [B, D, 1]
        alpha: Tensor = 1.0 + self.intra(v_intra) + self.inter(v_inter)
        return alpha

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.modulation(x)  # [B, D, N]
        if self.per_patch:
            patched: Tensor = x + self.dropout(self._per_patch(x, alpha))
            return patched
        scale = alpha[..., None, None]  # [B, D, N, 1, 1]
        y = F.conv3d(x, self.weight, padding=self.padding)
        y = F.conv_transpose3d(scale * scale * y, self.weight, padding=self.padding)
        out: Tensor = x + self.dropout(y)
        return out

    def _per_patch(self, x: Tensor, alpha: Tensor) -> Tensor:
        """The same block for kernel (1, kh, kw), as 2D convs over frames ``[B·N, D, 2, P/2]``."""
        d, half = self.d_model, self.half_patch
        n = x.shape[2]
        frames = x.permute(0, 2, 1, 3, 4).reshape(-1, d, 2, half)  # [B·N, D, 2, P/2]
        scale = alpha.permute(0, 2, 1).reshape(-1, d, 1, 1)  # [B·N, D, 1, 1]
        weight = self.weight[:, :, 0]  # [D, D, kh, kw]
        padding = self.padding[1:]
        y = F.conv2d(frames, weight, padding=padding)
        # A stride-1 transposed conv is a conv with in/out swapped and the kernel flipped.
        flipped = weight.transpose(0, 1).flip(-1, -2)
        pad_t = (weight.shape[2] - 1 - padding[0], weight.shape[3] - 1 - padding[1])
        z = F.conv2d(scale * scale * y, flipped, padding=pad_t)
        return z.reshape(-1, n, d, 2, half).permute(0, 2, 1, 3, 4)


class TVNet(nn.Module):
    """Reconstruct windows: ``forward(x: [B, L, C]) -> [B, L, C]`` (samples of a batch independent)."""

    def __init__(self, config: TVNetConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.norm = WindowNorm(config.window_length)
        self.token = nn.Conv1d(config.n_features, d, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.register_buffer("positions", sinusoidal_positions(config.window_length, d), persistent=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.patches = PatchEmbedding3D(config)
        self.blocks = nn.ModuleList(DynamicBlock3D(config) for _ in range(config.n_blocks))
        self.time_head = nn.Linear(config.n_patches * config.patch_length, config.window_length)
        self.feature_head = nn.Linear(d, config.n_features)
        self.level = (
            LevelAutoencoder(config.n_features, config.level_bottleneck, config.input_clip)
            if config.level_bottleneck
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.config.window_norm:
            z, mean, std = self.norm.normalise(x)  # [B, L, C], stats [B, 1, C]
        else:
            z = x.clamp(-self.config.input_clip, self.config.input_clip)
        h = self.embed_dropout(self.token(z.transpose(1, 2)) + self.positions)  # [B, D, L]
        h3 = self.patches(h)  # [B, D, N, 2, P/2]
        for block in self.blocks:
            h3 = block(h3)
        flat = h3.flatten(start_dim=2)  # [B, D, N·P]
        out: Tensor = self.feature_head(self.time_head(flat).transpose(1, 2))  # [B, L, C]
        if not self.config.window_norm:
            return out
        restored: Tensor = self.norm.denormalise(
            out, self.level(mean, std) if self.level is not None else mean, std
        )
        return restored
