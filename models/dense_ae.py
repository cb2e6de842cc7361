"""Dense autoencoder: the flattened window through an MLP bottleneck and back (the usual first baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn


@dataclass(frozen=True)
class DenseAEConfig:
    """Layer widths from the flattened window (L·C) down to ``bottleneck``; the decoder mirrors them.

    Defaults for L=100, C=38: 3800 → 256 → 64 → 32 → 64 → 256 → 3800 (about 2.0 M parameters, nearly all
    in the first and last layers). A 32-value code is ~120× smaller than the window: enough for the slow,
    strongly correlated regime of server telemetry, too small to copy point anomalies through.
    """

    window_length: int
    n_features: int
    hidden_sizes: tuple[int, ...] = (256, 64)
    bottleneck: int = 32
    activation: Literal["relu", "gelu"] = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # A config read back from JSON carries a list; keep the field hashable and immutable.
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.window_length < 1 or self.n_features < 1:
            raise ValueError("window_length and n_features must be >= 1")
        if self.bottleneck < 1 or any(h < 1 for h in self.hidden_sizes):
            raise ValueError("layer widths must be >= 1")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _build_stack(widths: list[int], config: DenseAEConfig) -> nn.Sequential:
    """Linear layers through ``widths``; activation and dropout between them, none after the last."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2:
            layers.append(nn.ReLU() if config.activation == "relu" else nn.GELU())
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


class DenseAE(nn.Module):
    """``x: [B, L, C] -> [B, L, C]`` through ``encode`` ([B, bottleneck]) and ``decode``.

    The code and the output are linear: a ReLU on the code would silence part of the bottleneck, and
    normalised inputs are signed and unbounded.
    """

    def __init__(self, config: DenseAEConfig) -> None:
        super().__init__()
        self.config = config
        flat = config.window_length * config.n_features
        widths = [flat, *config.hidden_sizes, config.bottleneck]
        self.encoder = _build_stack(widths, config)
        self.decoder = _build_stack(widths[::-1], config)

    def encode(self, x: Tensor) -> Tensor:
        """x: [B, L, C] -> code [B, bottleneck]."""
        code: Tensor = self.encoder(x.flatten(1))  # [B, L·C] -> [B, bottleneck]
        return code

    def decode(self, code: Tensor) -> Tensor:
        """code: [B, bottleneck] -> reconstruction [B, L, C]."""
        flat: Tensor = self.decoder(code)  # [B, L·C]
        return flat.reshape(-1, self.config.window_length, self.config.n_features)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, C] -> reconstruction [B, L, C]."""
        return self.decode(self.encode(x))
