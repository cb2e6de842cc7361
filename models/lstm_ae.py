"""LSTM encoder-decoder that reconstructs the window in reverse order (Srivastava et al. 2015; EncDec-AD,
Malhotra et al. 2016).

The encoder reads x_0 … x_{L-1}; its final state starts the decoder, which emits x_{L-1} first and x_0
last. The most recent steps are then decoded closest to the state that remembers them best. The decoder
is not teacher-forced: at every step its input is the same latent code (the encoder's top-layer final
hidden state), so training and inference run the identical graph and no reconstruction is fed back. The
emitted sequence is flipped so the output aligns with the input's time order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LSTMAEConfig:
    """``hidden_size`` is both the LSTM width and the code size; ``dropout`` acts between stacked layers.

    Defaults for L=100, C=38: one layer of 64 units (about 62 k parameters). The window's 3800 values
    pass through a 128-value state (h and c), a ~30× compression.
    """

    window_length: int
    n_features: int
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.window_length < 1 or self.n_features < 1:
            raise ValueError("window_length and n_features must be >= 1")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


LSTMState = tuple[Tensor, Tensor]  # (h, c), each [num_layers, B, hidden_size]


class LSTMAE(nn.Module):
    """``x: [B, L, C] -> [B, L, C]``: ``encode`` to a state, ``decode`` in reverse time, flip back."""

    def __init__(self, config: LSTMAEConfig) -> None:
        super().__init__()
        self.config = config
        between_layers = config.dropout if config.num_layers > 1 else 0.0
        self.encoder = nn.LSTM(
            config.n_features, config.hidden_size, config.num_layers, batch_first=True, dropout=between_layers
        )
        self.decoder = nn.LSTM(
            config.hidden_size,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=between_layers,
        )
        self.head = nn.Linear(config.hidden_size, config.n_features)

    def encode(self, x: Tensor) -> LSTMState:
        """x: [B, L, C] -> final encoder state (h, c), each [num_layers, B, hidden_size]."""
        state: LSTMState
        _, state = self.encoder(x)
        return state

    def decode(self, state: LSTMState, n_steps: int) -> Tensor:
        """Reconstructions in decoding order, [B, n_steps, C]: step j reconstructs x_{L-1-j}."""
        code = state[0][-1]  # [B, H]: the top layer's final hidden state
        inputs = code.unsqueeze(1).expand(-1, n_steps, -1)  # [B, n_steps, H]
        hidden, _ = self.decoder(inputs, state)  # [B, n_steps, H]
        emitted: Tensor = self.head(hidden)  # [B, n_steps, C]
        return emitted

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, C] -> reconstruction [B, L, C] in the input's time order."""
        emitted = self.decode(self.encode(x), self.config.window_length)  # [B, L, C], newest step first
        return torch.flip(emitted, dims=(1,))
