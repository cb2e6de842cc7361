"""TVNet: shapes, per-sample independence, the dynamic-conv rewrite, ONNX parity and batch invariance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from models.tvnet import TVNet, TVNetConfig
from training.export import check_parity, export_onnx


def trained_briefly(config: TVNetConfig, steps: int = 5) -> TVNet:
    """A few optimiser steps so BatchNorm statistics and α are not at their initial values."""
    torch.manual_seed(0)
    model = TVNet(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(16, config.window_length, config.n_features)
        loss = F.mse_loss(model(x), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_tvnet_maps_windows_to_windows_of_the_same_shape() -> None:
    model = TVNet(TVNetConfig(window_length=100, n_features=38)).eval()
    assert model(torch.randn(3, 100, 38)).shape == (3, 100, 38)


def test_tvnet_3d_embedding_puts_patches_on_their_own_axis() -> None:
    config = TVNetConfig(window_length=100, n_features=4, d_model=8, patch_stride=10)
    model = TVNet(config)
    embedded = model.patches(torch.randn(2, 8, 100))
    assert embedded.shape == (2, 8, config.n_patches, 2, config.patch_length // 2)  # [B, D, N, 2, P/2]
    # A change confined to one patch's time span moves that patch (and its overlapping neighbour) only.
    h = torch.zeros(1, 8, 100)
    bumped = h.clone()
    bumped[0, 3, 45] = 1.0  # time step 45 lies in patches 3 (30..49) and 4 (40..59)
    diff = (model.patches(bumped) - model.patches(h)).abs().sum(dim=(0, 1, 3, 4))
    assert set(torch.nonzero(diff).flatten().tolist()) == {3, 4}


def test_tvnet_config_rejects_a_window_that_is_not_a_multiple_of_the_stride() -> None:
    with pytest.raises(ValueError, match="multiple"):
        TVNetConfig(window_length=105, n_features=3, patch_stride=10)


def test_tvnet_output_of_a_sample_does_not_depend_on_its_batch_mates() -> None:
    model = trained_briefly(TVNetConfig(window_length=100, n_features=6, d_model=16, n_blocks=2))
    x = torch.randn(5, 100, 6)
    with torch.no_grad():
        alone = model(x[:1])
        together = model(x)
        replaced = model(torch.cat([x[:1], torch.randn(4, 100, 6) * 3]))
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replaced[:1], alone, rtol=1e-5, atol=1e-5)


def test_tvnet_dynamic_block_equals_a_conv_with_per_sample_per_patch_scaled_weights() -> None:
    config = TVNetConfig(window_length=40, n_features=3, d_model=4, patch_stride=10, kernel_size=(1, 3, 3))
    model = trained_briefly(config)
    block = model.blocks[0]
    x = torch.randn(2, 4, config.n_patches, 2, 10)
    with torch.no_grad():
        alpha = block.modulation(x)  # [B, D, N]
        expected = torch.empty_like(x)
        for b in range(2):
            for n in range(config.n_patches):
                weight = alpha[b, :, n].view(-1, 1, 1, 1, 1) * block.weight  # α scales each output channel
                patch = x[b : b + 1, :, n : n + 1]
                y = F.conv3d(patch, weight, padding=block.padding)
                expected[b : b + 1, :, n : n + 1] = F.conv_transpose3d(y, weight, padding=block.padding)
        got = block(x) - x  # dropout is off in eval mode
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_tvnet_modulation_varies_with_the_sample_and_the_patch() -> None:
    model = trained_briefly(TVNetConfig(window_length=100, n_features=6, d_model=16, n_blocks=1))
    x = torch.randn(2, 16, 10, 2, 10)
    with torch.no_grad():
        alpha = model.blocks[0].modulation(x)
    assert alpha.shape == (2, 16, 10)
    assert not torch.allclose(alpha[0], alpha[1])
    assert not torch.allclose(alpha[0, :, 0], alpha[0, :, 5])


def test_tvnet_window_norm_hides_a_level_shift_of_the_whole_window_and_without_it_the_shift_shows() -> None:
    shift = torch.zeros(1, 1, 38)
    shift[..., 5] = 4.0  # one sensor 4 scales up for the whole window
    x = torch.randn(2, 100, 38)
    config = TVNetConfig(window_length=100, n_features=38, d_model=16, n_blocks=2)
    normed = trained_briefly(config)
    raw = trained_briefly(dataclasses.replace(config, window_norm=False))

    def error(model: TVNet, v: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(v) - v)[..., 5].pow(2).mean())  # the shifted sensor's error

    # Per-window normalisation: the reconstruction follows the shift, so the error does not change.
    assert error(normed, x + shift) == pytest.approx(error(normed, x), rel=1e-3)
    # Fed the standardised window as it is, the model sees the shift.
    assert error(raw, x + shift) > 2 * error(raw, x)


def test_tvnet_without_window_norm_exports_with_parity(tmp_path: Path) -> None:
    model = trained_briefly(
        TVNetConfig(window_length=100, n_features=38, d_model=16, n_blocks=2, window_norm=False)
    )
    path = export_onnx(model, tmp_path / "tvnet.onnx", 100, 38)
    result = check_parity(model, path, 100, 38, batch_sizes=(1, 7, 64))
    assert result.passed, result.max_abs_diff


def test_tvnet_onnx_export_matches_pytorch_at_batch_1_7_and_64(tmp_path: Path) -> None:
    model = trained_briefly(TVNetConfig(window_length=100, n_features=38, d_model=16, n_blocks=2))
    path = export_onnx(model, tmp_path / "tvnet.onnx", 100, 38)
    result = check_parity(model, path, 100, 38, batch_sizes=(1, 7, 64))
    assert set(result.max_abs_diff) == {1, 7, 64}
    assert result.passed, result.max_abs_diff
    assert result.opset >= 17


def test_tvnet_onnx_output_of_a_window_is_identical_alone_and_in_a_batch(tmp_path: Path) -> None:
    """The streaming parity rule needs bit-identical windows whatever batch they land in."""
    model = trained_briefly(TVNetConfig(window_length=100, n_features=38, d_model=16, n_blocks=2))
    path = export_onnx(model, tmp_path / "tvnet.onnx", 100, 38)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((33, 100, 38)) * 5).astype(np.float32)
    x[:, :, 7] = 12.5  # flat channels are where rounding would be amplified
    together = session.run(None, {"window": x})[0]
    alone = np.concatenate([session.run(None, {"window": x[i : i + 1]})[0] for i in range(len(x))])
    assert np.array_equal(together, alone)


def test_tvnet_level_autoencoder_shows_a_level_shift_that_window_norm_alone_hides() -> None:
    """With a level autoencoder the restored level is the predicted one: a sensor lifted for the whole window
    (its level now unlike the other channels' in training) raises that sensor's error, the shape stays
    normalised for the network."""
    torch.manual_seed(0)
    config = TVNetConfig(window_length=100, n_features=8, d_model=16, n_blocks=1, level_bottleneck=3)
    model = TVNet(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # training windows whose levels sit near zero
        x = torch.randn(32, 100, 8) * 0.5 + torch.randn(32, 1, 8) * 0.1
        loss = F.mse_loss(model(x), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x = torch.randn(4, 100, 8) * 0.5
    shifted = x.clone()
    shifted[..., 5] += 4.0

    def error(v: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(v) - v)[..., 5].pow(2).mean())

    assert error(shifted) > 4 * error(x)


def test_tvnet_level_autoencoder_needs_window_norm_and_a_positive_width() -> None:
    with pytest.raises(ValueError, match="level_bottleneck"):
        TVNetConfig(window_length=100, n_features=4, level_bottleneck=2, window_norm=False)
    with pytest.raises(ValueError, match="level_bottleneck"):
        TVNetConfig(window_length=100, n_features=4, level_bottleneck=-1)


def test_tvnet_with_a_level_autoencoder_exports_with_parity_and_batch_invariance(tmp_path: Path) -> None:
    model = trained_briefly(
        TVNetConfig(window_length=100, n_features=38, d_model=16, n_blocks=2, level_bottleneck=8)
    )
    path = export_onnx(model, tmp_path / "tvnet.onnx", 100, 38)
    result = check_parity(model, path, 100, 38, batch_sizes=(1, 7, 64))
    assert result.passed, result.max_abs_diff
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(2).standard_normal((17, 100, 38)) * 3).astype(np.float32)
    x[:, :, 4] = -30.0  # a flat channel beyond the clip
    together = session.run(None, {"window": x})[0]
    alone = np.concatenate([session.run(None, {"window": x[i : i + 1]})[0] for i in range(len(x))])
    assert np.array_equal(together, alone)
