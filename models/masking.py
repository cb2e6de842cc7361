"""Hide each window's newest points from the network, so that it predicts them instead of copying them
(training only; torch).

A reconstruction model sees the very points it is scored on: a network with enough capacity learns to pass an
unusual value through, and the anomaly it should flag comes back with a small error. Hiding the points to be
scored removes that shortcut: the network must infer them from the window's earlier points, and what it cannot
infer is what the score measures. This is the argument of prediction-based detectors (Hundman et al., KDD 2018,
forecast the next values; Malhotra et al., ESANN 2015) and of masked reconstruction (He et al., CVPR 2022, for
the masking objective). Here the hidden span is the window's newest ``span`` points, which are exactly the
points a served window scores at stride ``span``: each scored point becomes a forecast from the ``L - span``
points before it, and the score stays causal.

The hidden points are held at the last visible value (a neutral guess in any normalisation), so the input keeps
its shape ``[B, L, C]`` and the wrapped architecture is unchanged. The wrapper is part of the exported graph:
the service, calibration and ``vigil evaluate`` run it like any bundle.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskNewest(nn.Module):
    """``[B, L, C] -> the wrapped module's output`` with ``x[:, L - span:]`` replaced by ``x[:, L - span - 1]``."""

    def __init__(self, module: nn.Module, span: int, window_length: int) -> None:
        super().__init__()
        if not 1 <= span < window_length:
            raise ValueError(f"the hidden span must be 1 to {window_length - 1} points, not {span}")
        if callable(getattr(module, "training_loss", None)):
            raise ValueError("the model trains with its own loss; hiding points would bypass it")
        if not getattr(module, "trainable", True):
            raise ValueError("the model is fitted in closed form; it cannot learn to predict hidden points")
        self.module = module
        self.span = span
        self.visible = window_length - span
        for name in ("output_names", "score_definition"):
            value = getattr(module, name, None)
            if value is not None:
                setattr(self, name, value)

    def prepare_for_export(self) -> None:
        prepare = getattr(self.module, "prepare_for_export", None)
        if callable(prepare):
            prepare()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        visible = x[:, : self.visible]
        held = x[:, self.visible - 1 : self.visible].repeat(1, self.span, 1)
        out: Tensor | tuple[Tensor, ...] = self.module(torch.cat([visible, held], dim=1))
        return out
