"""TimesNet's period block (Wu et al., ICLR 2023) with its periods frozen as constants.

TimesNet finds the top-k frequencies of its input with an FFT on every forward pass and reshapes the sequence
by the matching periods. Both are export traps (../shared/MODELS.md §3.3: the TorchScript exporter has no FFT,
and a data-dependent period is silently frozen to the example input's). Here the periods are chosen once, on
training data (``top_periods``), and become Python constants, so every reshape has a static shape.

What stays per sample is the amplitude weighting of the k period branches: TimesNet weights branch k by the
softmax over k of the sample's spectral amplitude at frequency bin ``f_k`` (mean over channels). At frozen
bins that amplitude is two dot products per channel, ``Σ_t x_t cos(2π f t / L)`` and ``Σ_t x_t sin(…)``, i.e.
one MatMul against a constant ``[L, 2k]`` basis: an exact DFT at those bins, no FFT op in the graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def top_periods(amplitude: Tensor, window_length: int, k: int) -> tuple[int, ...]:
    """The ``k`` distinct periods ``L // f`` of the strongest frequency bins ``f >= 1``.

    ``amplitude``: ``[L // 2 + 1]`` spectral amplitude (bin 0, the mean, is ignored). Bins that share a period
    (short periods: ``L // 13 == L // 14 == 7`` for L = 100) count once, at the rank of the strongest of them.
    """
    periods: list[int] = []
    for bin_index in torch.argsort(amplitude[1:], descending=True, stable=True).tolist():
        period = window_length // (bin_index + 1)
        if period not in periods:
            periods.append(period)
        if len(periods) == k:
            break
    return tuple(periods)


def default_periods(window_length: int, k: int) -> tuple[int, ...]:
    """Periods of the ``k`` lowest bins: TimesNet's choice for a spectrum that falls with frequency (red noise)."""
    return top_periods(torch.arange(window_length // 2 + 1, 0, -1, dtype=torch.float32), window_length, k)


def period_bin(window_length: int, period: int) -> int:
    """The frequency bin whose amplitude weights a period's branch: the highest bin ``f`` with ``L // f == period``."""
    return window_length // period


class InceptionConv2d(nn.Module):
    """TSLib's Inception_Block_V1 (mean of centred Conv2d with kernels 1, 3, …, 2n−1), run as ONE conv.

    Averaging convolutions is linear in their kernels, so the block equals a single (2n−1)×(2n−1) conv whose
    kernel is the mean of the zero-padded kernels: exact, fewer FLOPs, and constant-folded at export.
    ``[B, c_in, H, W] -> [B, c_out, H, W]``.
    """

    def __init__(self, c_in: int, c_out: int, n_kernels: int) -> None:
        super().__init__()
        self.n_kernels = n_kernels
        self.kernels = nn.ParameterList(
            nn.Parameter(torch.empty(c_out, c_in, 2 * i + 1, 2 * i + 1)) for i in range(n_kernels)
        )
        for kernel in self.kernels:
            nn.init.kaiming_normal_(kernel, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.kernel_shape = (c_out, c_in, 2 * n_kernels - 1, 2 * n_kernels - 1)

    def merged_kernel(self) -> Tensor:
        """``[c_out, c_in, 2n−1, 2n−1]``: the mean of the kernels, each zero-padded to the largest size."""
        largest = self.n_kernels - 1
        total: Tensor = self.kernels[largest]
        for i in range(largest):
            total = total + F.pad(self.kernels[i], [largest - i] * 4)
        # The static reshape lets the TorchScript exporter see the kernel's shape (it rejects a conv otherwise).
        return (total / self.n_kernels).reshape(self.kernel_shape)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.merged_kernel(), self.bias, padding=self.n_kernels - 1)


class TimesBlock(nn.Module):
    """One TimesNet block at frozen periods: ``[B, L, D] -> [B, L, D]`` (residual, samples independent).

    For each period p the sequence is zero-padded to a multiple of p, folded to a 2D grid
    ``[B, D, ⌈L/p⌉, p]`` (rows = cycles, columns = phase), convolved by the shared inception pair and
    unfolded; the k branches are summed with per-sample softmax weights of the spectral amplitude.
    """

    channel_average: Tensor
    basis: Tensor

    def __init__(
        self, window_length: int, d_model: int, d_ff: int, n_kernels: int, periods: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.window_length = window_length
        self.conv = nn.Sequential(
            InceptionConv2d(d_model, d_ff, n_kernels), nn.GELU(), InceptionConv2d(d_ff, d_model, n_kernels)
        )
        # A MatMul, not a mean reduction: ORT reductions may sum in a batch-size dependent order.
        self.register_buffer("channel_average", torch.full((d_model, 1), 1.0 / d_model), persistent=False)
        self.periods: tuple[int, ...] = ()
        self.set_periods(periods)

    def set_periods(self, periods: tuple[int, ...]) -> None:
        """Freeze the branch periods and rebuild the constant DFT basis ``[L, 2k]`` (cos | −sin)."""
        self.periods = tuple(periods)
        steps = torch.arange(self.window_length, dtype=torch.float64)[:, None]
        bins = torch.tensor([period_bin(self.window_length, p) for p in self.periods], dtype=torch.float64)
        angle = 2.0 * math.pi * steps * bins[None, :] / self.window_length  # [L, k]
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1).to(torch.float32)
        self.register_buffer("basis", basis, persistent=False)

    def period_weights(self, x: Tensor) -> Tensor:
        """``x: [B, L, D]`` → ``[B, k]``: softmax over branches of the mean amplitude at each period's bin."""
        k = len(self.periods)
        spectrum = torch.matmul(x.transpose(1, 2), self.basis)  # [B, D, 2k]: real | imaginary parts
        real, imaginary = spectrum[..., :k], spectrum[..., k:]
        amplitude = torch.sqrt(real * real + imaginary * imaginary + 1e-12)  # eps: finite gradient at 0
        mean_amplitude = torch.matmul(amplitude.transpose(1, 2), self.channel_average)  # [B, k, 1]
        return torch.softmax(mean_amplitude.flatten(start_dim=1), dim=1)

    def branch(self, x: Tensor, period: int) -> Tensor:
        """``[B, L, D]`` folded by ``period`` into ``[B, D, rows, period]``, convolved, unfolded to ``[B, L, D]``."""
        length, d_model = self.window_length, x.shape[-1]
        rows = -(-length // period)
        if rows * period != length:
            x = F.pad(x, (0, 0, 0, rows * period - length))  # zeros after the last step, as TimesNet
        grid = x.reshape(-1, rows, period, d_model).permute(0, 3, 1, 2)  # [B, D, rows, period]
        out: Tensor = self.conv(grid).permute(0, 2, 3, 1).reshape(-1, rows * period, d_model)
        return out[:, :length]

    def forward(self, x: Tensor) -> Tensor:
        weights = self.period_weights(x)  # [B, k]
        mixed = self.branch(x, self.periods[0]) * weights[:, :1, None]
        for i, period in enumerate(self.periods[1:], start=1):
            mixed = mixed + self.branch(x, period) * weights[:, i : i + 1, None]
        return mixed + x
