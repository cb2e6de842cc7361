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
