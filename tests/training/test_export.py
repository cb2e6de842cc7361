"""training.export's parity check: what it must refuse."""

from __future__ import annotations

from pathlib import Path

import torch

from training.export import check_parity, export_onnx


class TwoOutputs(torch.nn.Module):
    """A reconstruction that is fine and a second output that is NaN in both runtimes."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(x.sum(-1), dim=-1) * torch.log(x.sum(-1) - 1e9)  # log of a negative
        return x * 1.0, weights


def test_a_second_output_that_is_nan_fails_the_parity_check(tmp_path: Path) -> None:
    """Python's max() dropped a NaN difference unless it came first, so this graph passed (found by a review)."""
    module = TwoOutputs()
    path = export_onnx(module, tmp_path / "model.onnx", 8, 3, output_names=["reconstruction", "association"])
    result = check_parity(module, path, 8, 3, batch_sizes=(1, 4))
    assert not result.passed
    assert all(diff != diff for diff in result.max_abs_diff.values())  # NaN, reported as such
