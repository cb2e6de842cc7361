"""An ensemble of independently trained reconstruction models, exported as one graph (training only; torch).

Each member is the same architecture trained from its own seed; the graph's reconstruction is the members'
mean, so the service, calibration and ``vigil evaluate`` score it like any other bundle. Averaging the
reconstructions of several independently initialised autoencoders is the variance reduction that RandNet
(Chen, Sathe, Aggarwal and Turaga, "Outlier Detection with Autoencoder Ensembles", SDM 2017) measured for
outlier detection: one seed's idiosyncratic errors on normal data average out, the errors every member makes
on an anomaly do not.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MeanEnsemble(nn.Module):
    """``[B, L, C] -> [B, L, C]``: the mean of the members' outputs (each output of a multi-output model)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        first = members[0]
        names = getattr(first, "output_names", None)
        if names is not None:
            self.output_names = list(names)
        define = getattr(first, "score_definition", None)
        if callable(define):
            self.score_definition = define

    def prepare_for_export(self) -> None:
        for member in self.members:
            prepare = getattr(member, "prepare_for_export", None)
            if callable(prepare):
                prepare()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        outputs = [member(x) for member in self.members]
        if isinstance(outputs[0], tuple | list):
            return tuple(_mean([out[i] for out in outputs]) for i in range(len(outputs[0])))
        return _mean(outputs)


def _mean(tensors: list[Tensor]) -> Tensor:
    """Elementwise mean by chained additions: exported as Add nodes, no reduction whose summation order could
    depend on the batch size, so a window's output stays the same alone or inside any batch."""
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total * (1.0 / len(tensors))
