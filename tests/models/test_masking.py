"""``models.masking.MaskNewest``: the wrapped network never sees a window's newest points, whatever the family,
and the wrapper refuses the models it cannot train."""

from __future__ import annotations

import pytest
import torch

from models.masking import MaskNewest
from models.registry import build_model

L, C, SPAN = 40, 5, 8


@pytest.mark.parametrize("family", ["tvnet", "convtimenet", "dense_ae", "lstm_ae"])
def test_the_output_ignores_the_hidden_points_and_follows_the_visible_ones(family: str) -> None:
    torch.manual_seed(0)
    masked = MaskNewest(build_model(family, L, C).module, SPAN, L).eval()
    x = torch.randn(3, L, C)
    hidden, visible = x.clone(), x.clone()
    hidden[:, L - SPAN :] += 7.0
    visible[:, L - SPAN - 1] += 7.0  # the last visible point: the one the hidden span is held at
    with torch.no_grad():
        out = masked(x)
        assert out.shape == (3, L, C)
        assert torch.equal(masked(hidden), out)
        assert not torch.allclose(masked(visible), out, atol=1e-4)


def test_the_hidden_points_are_held_at_the_last_visible_value() -> None:
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

    x = torch.arange(2 * L * C, dtype=torch.float32).reshape(2, L, C)
    MaskNewest(Probe(), SPAN, L)(x)
    assert torch.equal(seen[0][:, : L - SPAN], x[:, : L - SPAN])
    assert torch.equal(seen[0][:, L - SPAN :], x[:, L - SPAN - 1 : L - SPAN].expand(2, SPAN, C))


@pytest.mark.parametrize("span", [0, L])
def test_a_span_that_hides_nothing_or_everything_is_refused(span: int) -> None:
    with pytest.raises(ValueError, match="hidden span"):
        MaskNewest(build_model("tvnet", L, C).module, span, L)


@pytest.mark.parametrize(("family", "reason"), [("pca", "closed form"), ("timesnet_ad", "own loss")])
def test_models_it_cannot_train_are_refused(family: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        MaskNewest(build_model(family, L, C).module, SPAN, L)
