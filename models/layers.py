"""Blocks shared by several architectures."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WindowNorm(nn.Module):
    """Per-window, per-channel normalisation over time (RevIN without affine / TSLib stationarisation).

    ``normalise(x: [B, L, C]) -> (z, mean, std)`` and ``denormalise(y, mean, std)``. The statistics are
    computed as a MatMul against a constant averaging vector rather than a mean reduction: ONNX Runtime's
    ReduceMean sums in an order that depends on the batch size (measured: ~10 ulps), and dividing by the std of
    a near-flat channel amplifies that several hundred times, which would break the streaming parity rule
    (a window must score the same alone or inside any batch). The MatMul form is bit-identical across batch
    sizes on ORT CPU.
    """

    average: Tensor

    def __init__(self, window_length: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("average", torch.full((window_length, 1), 1.0 / window_length), persistent=False)

    def _mean_over_time(self, x: Tensor) -> Tensor:
        return torch.matmul(x.transpose(1, 2), self.average).transpose(1, 2)  # [B, 1, C]

    def normalise(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = self._mean_over_time(x).detach()
        centred = x - mean
        std = torch.sqrt(self._mean_over_time(centred * centred) + self.eps).detach()
        return centred / std, mean, std

    @staticmethod
    def denormalise(y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        return y * std + mean


class LevelAutoencoder(nn.Module):
    """Reconstruct a window's per-channel level from the levels and spreads of all its channels, through a
    bottleneck: ``forward(mean, std: [B, 1, C]) -> mean_hat [B, 1, C]``.

    A model that normalises each window and restores the window's own statistics after its head can never be
    wrong about a level; one that restores ``mean_hat`` instead is wrong exactly where a channel's level is
    unlike what the other channels' levels said it was in training, or beyond the training range (the input is
    clipped to ±``clip`` training deviations, the error is not). ``bottleneck`` < C keeps it from copying.

    The spreads enter as they are, not as logarithms: with its Log, the exported graph gave a window outputs
    1 ulp apart alone and in a batch of 17 on 2 intra-op threads (none on 1 thread, none without the Log: the
    vectorised Log rounds by where the thread blocks fall), which the streaming parity rule forbids.
    """

    def __init__(self, n_features: int, bottleneck: int, clip: float) -> None:
        super().__init__()
        self.clip = clip
        self.encode = nn.Linear(2 * n_features, bottleneck)
        self.decode = nn.Linear(bottleneck, n_features)

    def forward(self, mean: Tensor, std: Tensor) -> Tensor:
        levels = torch.cat(
            (mean.clamp(-self.clip, self.clip), std.clamp(max=self.clip)), dim=-1
        )  # [B, 1, 2C]
        out: Tensor = self.decode(torch.relu(self.encode(levels)))  # [B, 1, C]
        return out
