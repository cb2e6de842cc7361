"""ConvTimeNet: shapes, config checks, sample independence, deformable sampling, re-parameterisation, ONNX."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from models.convtimenet import ConvBlock, ConvTimeNet, ConvTimeNetConfig, auto_kernels, auto_patches
from models.registry import build_model
from training.export import check_parity, export_onnx

CPU_ONLY_OPS = {"GridSample", "ScatterND", "ScatterElements", "Resize"}


def tiny_config(**overrides: Any) -> ConvTimeNetConfig:
    # residual_scale_init 0.5 so the convolutions visibly shape the output (1e-8 would hide a bad merge).
    values: dict[str, Any] = {
        "window_length": 24,
        "n_features": 3,
        "patch_length": 8,
        "patch_stride": 4,
        "d_model": 16,
        "d_ff": 32,
        "kernel_sizes": (5, 7),
        "offset_hidden": 8,
        "residual_scale_init": 0.5,
    }
    values.update(overrides)
    return ConvTimeNetConfig(**values)


def train_briefly(model: ConvTimeNet, steps: int = 5, batch: int = 16, seed: int = 0) -> ConvTimeNet:
    """A few Adam steps so BatchNorm statistics, kernels and offsets are no longer at their initial values."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.randn(batch, config.window_length, config.n_features, generator=generator)
        loss = F.mse_loss(model(x), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [ConvTimeNetConfig(window_length=100, n_features=38), tiny_config()],
    ids=["default-100x38", "tiny"],
)
def test_convtimenet_reconstructs_windows_of_the_input_shape(config: ConvTimeNetConfig) -> None:
    model = ConvTimeNet(config).eval()
    x = torch.randn(4, config.window_length, config.n_features)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (4, config.window_length, config.n_features)
    assert torch.isfinite(y).all()


def test_constant_channels_stay_finite_and_close_to_their_level() -> None:
    # SMD has sensors that never move; per-window normalisation must not divide by zero on them.
    torch.manual_seed(0)
    model = train_briefly(ConvTimeNet(tiny_config()))
    x = torch.randn(4, 24, 3)
    x[:, :, 1] = 2.5
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, :, 1], torch.full((4, 24), 2.5), atol=0.1, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"window_length": 100, "patch_length": 16, "patch_stride": 8},  # (100 - 16) % 8 = 4
        {"window_length": 24, "patch_length": 8, "patch_stride": 5},
        {"patch_length": 1, "patch_stride": 1},
        {"patch_length": 32, "patch_stride": 4},  # longer than the window
        {"patch_length": None},  # one of the two left to the automatic choice
        {"kernel_sizes": (4, 7)},  # even kernel
        {"kernel_sizes": ()},
        {"kernel_sizes": (13,)},  # wider than 2N - 1 = 11
        {"small_kernel": 9, "kernel_sizes": (5, 7)},
        {"dropout": 1.0},
    ],
)
def test_config_rejects_inconsistent_hyperparameters(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ConvTimeNet"):
        tiny_config(**overrides)


def test_config_from_a_json_bundle_builds_through_the_registry() -> None:
    built = build_model("convtimenet", 24, 3, patch_length=8, patch_stride=4, kernel_sizes=[5, 7], d_model=16)
    assert built.config.kernel_sizes == (5, 7)
    assert built.config.n_patches == 6
    assert isinstance(built.module, ConvTimeNet)
    assert built.hyperparameters()["kernel_sizes"] == (5, 7)


def test_default_patches_and_kernels_follow_the_window_and_are_recorded() -> None:
    built = build_model("convtimenet", 100, 38)
    recorded = built.hyperparameters()
    assert (recorded["patch_length"], recorded["patch_stride"]) == (20, 10)
    assert recorded["kernel_sizes"] == (5, 9, 13, 19)
    # A bundle records the resolved values, so reading it back builds the same model.
    assert ConvTimeNetConfig(**recorded) == built.config


@pytest.mark.parametrize("window_length", range(2, 301))
def test_automatic_patches_make_a_valid_config_for_every_window_length(window_length: int) -> None:
    patch, stride = auto_patches(window_length)
    config = ConvTimeNetConfig(window_length=window_length, n_features=2)
    assert (config.patch_length, config.patch_stride) == (patch, stride)
    assert (window_length - patch) % stride == 0
    assert config.kernel_sizes and max(config.kernel_sizes) <= 2 * config.n_patches - 1
    if window_length >= 20:
        # About ten tokens per channel whatever the window: the cost no longer grows with L.
        assert 8 <= config.n_patches <= 12


def test_automatic_kernels_keep_the_defaults_that_fit_and_cap_the_rest() -> None:
    assert auto_kernels(10) == (5, 9, 13, 19)
    assert auto_kernels(6) == (5, 9, 11)
    assert auto_kernels(3) == (5,)
    assert auto_kernels(2) == (3,)


def test_convtimenet_keeps_samples_independent_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = train_briefly(ConvTimeNet(tiny_config()))
    x = torch.randn(6, 24, 3)
    other = x.clone()
    other[1:] = 5.0 * torch.randn(5, 24, 3) + 3.0
    with torch.no_grad():
        alone = model(x[:1])
        first = model(x)
        changed = model(other)
    torch.testing.assert_close(first[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(changed[0], first[0], atol=1e-5, rtol=0)


def test_deformable_sampling_with_zero_offsets_equals_unfolding() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = train_briefly(ConvTimeNet(config))  # a trained offset predictor must not matter here
    series = torch.randn(5, config.padded_length)
    zero = torch.zeros(5, 2, config.n_patches)
    patches = model.patching.sample(series, zero)
    expected = series.unfold(1, config.patch_length, config.patch_stride)  # [5, N, P]
    assert patches.shape == expected.shape == (5, config.n_patches, config.patch_length)
    torch.testing.assert_close(patches, expected, atol=1e-5, rtol=0)


def test_untrained_patching_is_uniform() -> None:
    config = tiny_config()
    patching = ConvTimeNet(config).patching
    series = torch.randn(4, config.padded_length)
    expected = series.unfold(1, config.patch_length, config.patch_stride)
    torch.testing.assert_close(patching(series), expected, atol=1e-5, rtol=0)


def test_half_step_offset_interpolates_between_neighbours() -> None:
    config = tiny_config()
    patching = ConvTimeNet(config).patching
    series = torch.randn(4, config.padded_length)
    offsets = torch.zeros(4, 2, config.n_patches)
    offsets[:, 0] = 0.5
    patches = patching.sample(series, offsets)
    midpoints = 0.5 * (series[:, :-1] + series[:, 1:])  # value at t + 0.5
    expected = midpoints.unfold(1, config.patch_length, config.patch_stride)  # the N - 1 unclamped boxes
    torch.testing.assert_close(patches[:, :-1], expected, atol=1e-5, rtol=0)
    # The last box is clamped at the padded end instead of reading past it.
    assert torch.isfinite(patches[:, -1]).all()


def test_offset_predictor_learns_input_dependent_offsets() -> None:
    torch.manual_seed(0)
    model = ConvTimeNet(tiny_config()).train()
    x = torch.randn(8, 24, 3)
    F.mse_loss(model(x), x).backward()
    grad = model.patching.offset.weight.grad
    assert grad is not None and grad.abs().max() > 0


def test_prepare_for_export_merges_kernels_without_changing_the_output() -> None:
    torch.manual_seed(0)
    model = train_briefly(ConvTimeNet(tiny_config()))
    x = torch.randn(6, 24, 3)
    with torch.no_grad():
        before = model(x)
        # Dropping the small branch must change the output, or this test could not catch a wrong merge.
        unmerged = copy.deepcopy(model)
        for block in unmerged.blocks:
            assert isinstance(block, ConvBlock)
            block.depthwise_small = None
        assert (unmerged(x) - before).abs().max() > 1e-3
        model.prepare_for_export()
        after = model(x)
        model.prepare_for_export()
        again = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert torch.equal(again, after)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d) and m.groups == 16]
    assert len(depthwise) == len(model.config.kernel_sizes)


@pytest.mark.parametrize("kernel", [3, 5, 9, 19])
def test_the_band_form_of_a_depthwise_conv_equals_the_conv(kernel: int) -> None:
    """``ConvBlock.banded_depthwise`` is the depthwise conv with its zero padding, for kernels from the
    small one to the widest the tokens allow (2N - 1 at N = 10), bias included, gradients too."""
    torch.manual_seed(kernel)
    config = ConvTimeNetConfig(window_length=100, n_features=4, kernel_sizes=(kernel,))
    block = ConvBlock(config, kernel)
    torch.nn.init.normal_(block.depthwise.weight)
    torch.nn.init.normal_(block.depthwise.bias)
    x = torch.randn(7, config.d_model, config.n_patches, requires_grad=True)
    conv, band = block.depthwise(x), block.banded_depthwise(x)
    torch.testing.assert_close(band, conv, atol=1e-5, rtol=1e-5)
    (grad_conv,) = torch.autograd.grad(conv.square().sum(), block.depthwise.weight)
    (grad_band,) = torch.autograd.grad(band.square().sum(), block.depthwise.weight)
    torch.testing.assert_close(grad_band, grad_conv, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "config",
    [tiny_config(), ConvTimeNetConfig(window_length=100, n_features=38)],
    ids=["tiny", "default-100x38"],
)
def test_onnx_export_matches_torch_and_uses_gpu_friendly_ops(
    config: ConvTimeNetConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = train_briefly(ConvTimeNet(config), steps=2, batch=4)
    assert model.patching.offset.weight.abs().max() > 0  # offsets are live, so the sampler is exercised
    length, channels = config.window_length, config.n_features
    path = export_onnx(model, tmp_path / "m.onnx", length, channels)
    result = check_parity(model, path, length, channels)
    assert set(result.max_abs_diff) == {1, 7, 64}
    assert result.passed, result.max_abs_diff
    nodes = onnx.load(str(path)).graph.node
    op_types = {node.op_type for node in nodes}
    assert not op_types & CPU_ONLY_OPS
    assert "GatherElements" in op_types
    grouped = [
        node
        for node in nodes
        if node.op_type == "Conv" and any(a.name == "group" and a.i == config.d_model for a in node.attribute)
    ]
    assert not grouped  # the depthwise convs run as band-matrix products (band_depthwise, the default)
    assert sum(node.op_type == "MatMul" for node in nodes) >= len(config.kernel_sizes)


@pytest.mark.parametrize("deformable", [True, False])
def test_the_band_form_exports_with_parity_and_equals_the_grouped_conv_graph(
    deformable: bool, tmp_path: Path
) -> None:
    """The default export (``band_depthwise``) against the grouped-conv export of the same weights: both
    within the parity bound, the two graphs agree, and only the conv form has grouped Conv nodes."""
    torch.manual_seed(0)
    config = ConvTimeNetConfig(window_length=100, n_features=38, deformable=deformable)
    model = train_briefly(ConvTimeNet(config), steps=2, batch=4)
    conv = ConvTimeNet(dataclasses.replace(config, band_depthwise=False))
    conv.load_state_dict(model.state_dict())
    conv.eval()
    band_path = export_onnx(model, tmp_path / "band.onnx", 100, 38)
    conv_path = export_onnx(conv, tmp_path / "conv.onnx", 100, 38)
    windows = np.random.default_rng(1).standard_normal((9, 100, 38)).astype(np.float32)
    outputs, grouped = [], []
    for module, path in ((model, band_path), (conv, conv_path)):
        result = check_parity(module, path, 100, 38)
        assert result.passed, result.max_abs_diff
        nodes = onnx.load(str(path)).graph.node
        grouped.append(
            sum(
                n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in nodes
            )
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: windows})[0])
    assert grouped == [0, len(config.kernels)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)


def test_regular_patching_variant_equals_unfolding_and_exports_with_parity(tmp_path: Path) -> None:
    """The ablation without the deformable layer: fixed patches, no offset network, same export guarantees."""
    torch.manual_seed(0)
    config = ConvTimeNetConfig(
        window_length=100, n_features=38, patch_length=20, patch_stride=10, deformable=False
    )
    model = train_briefly(ConvTimeNet(config), steps=2, batch=4)
    assert not any("offset" in name for name, _ in model.named_parameters())
    series = torch.randn(5, config.padded_length)
    torch.testing.assert_close(model.patching(series), series.unfold(1, 20, 10), atol=0, rtol=0)
    path = export_onnx(model, tmp_path / "m.onnx", 100, 38)
    result = check_parity(model, path, 100, 38)
    assert result.passed, result.max_abs_diff
    assert not {node.op_type for node in onnx.load(str(path)).graph.node} & CPU_ONLY_OPS


def test_level_autoencoder_variant_exports_with_parity_and_restores_a_predicted_level(tmp_path: Path) -> None:
    """ConvTimeNet with a level autoencoder: the level after the head is predicted (a constant channel is no
    longer reproduced exactly from its own mean), and the export keeps its parity."""
    torch.manual_seed(0)
    config = tiny_config(level_bottleneck=2)
    model = train_briefly(ConvTimeNet(config), steps=3, batch=8)
    x = torch.randn(3, 24, 3)
    x[..., 1] = 7.0
    plain = train_briefly(ConvTimeNet(tiny_config()), steps=3, batch=8)
    with torch.no_grad():
        assert (plain(x)[..., 1] - 7.0).abs().max() < 1e-3  # window norm alone restores the level itself
        assert (model(x)[..., 1] - 7.0).abs().max() > 0.5
    path = export_onnx(model, tmp_path / "m.onnx", 24, 3)
    result = check_parity(model, path, 24, 3)
    assert result.passed, result.max_abs_diff
    with pytest.raises(ValueError, match="level_bottleneck"):
        tiny_config(level_bottleneck=-1)
