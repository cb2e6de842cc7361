"""Baselines (dense AE, reverse-order LSTM AE, fitted PCA) in PyTorch and through ONNX Runtime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from models.dense_ae import DenseAE, DenseAEConfig
from models.lstm_ae import LSTMAE, LSTMAEConfig
from models.pca import PCA, PCAConfig
from models.registry import build_model
from training.export import check_parity, export_onnx, run_onnx

L, C = 100, 38
FAMILIES = ("dense_ae", "lstm_ae", "pca")


def _correlated_windows(n: int, length: int, features: int, seed: int) -> Tensor:
    """Normalised-looking windows [n, length, features] whose sensors are linearly mixed (not isotropic)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    return torch.randn(n, length, features, generator=generator) @ mixing


def _build_default(name: str) -> nn.Module:
    """The registry's default-size model, seeded, in eval mode; PCA fitted so it is not the identity."""
    torch.manual_seed(0)
    module: nn.Module = build_model(name, L, C).module
    if name == "pca":
        module.fit_closed_form(_correlated_windows(64, L, C, seed=1))  # type: ignore[operator]
    return module.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def baseline(request: pytest.FixtureRequest) -> nn.Module:
    return _build_default(request.param)


# --- every family -------------------------------------------------------------------------------------


def test_baseline_maps_windows_to_windows_of_the_same_shape(baseline: nn.Module) -> None:
    x = torch.randn(3, L, C)
    with torch.no_grad():
        y = baseline(x)
    assert y.shape == (3, L, C)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)  # an identity map would make every score zero


def test_baseline_output_for_a_sample_ignores_its_batch_mates(baseline: nn.Module) -> None:
    generator = torch.Generator().manual_seed(2)
    first = torch.randn(5, L, C, generator=generator)
    second = first.clone()
    second[1:] = 10 * torch.randn(4, L, C, generator=generator)
    with torch.no_grad():
        in_first, in_second, alone = baseline(first)[0], baseline(second)[0], baseline(first[:1])[0]
    torch.testing.assert_close(in_second, in_first, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, in_first, atol=1e-5, rtol=0)


def test_baseline_exports_to_onnx_with_parity_at_batch_1_7_and_64(
    baseline: nn.Module, tmp_path: Path
) -> None:
    path = export_onnx(baseline, tmp_path / "m.onnx", L, C)
    result = check_parity(baseline, path, L, C)

    assert set(result.max_abs_diff) == {1, 7, 64}
    assert max(result.max_abs_diff.values()) <= 1e-4, result.max_abs_diff
    assert result.passed
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = run_onnx(session, torch.randn(7, L, C).numpy())
    assert output.shape == (7, L, C)


@pytest.mark.parametrize("name", FAMILIES)
def test_registry_config_survives_a_json_round_trip(name: str) -> None:
    built = build_model(name, L, C)
    restored = type(built.config)(**json.loads(json.dumps(built.hyperparameters())))
    assert restored == built.config
    assert dataclasses.fields(built.config)[0].name == "window_length"
    assert dataclasses.fields(built.config)[1].name == "n_features"


# --- dense autoencoder ----------------------------------------------------------------------------------


def test_dense_ae_gradient_steps_reduce_the_reconstruction_loss() -> None:
    torch.manual_seed(3)
    length, features = 20, 4
    time = torch.arange(length, dtype=torch.float32)
    phases = torch.rand(64, 1, features) * 6.283
    windows = torch.sin(0.3 * time[None, :, None] + phases)  # [64, 20, 4]: a low-dimensional family
    model = DenseAE(DenseAEConfig(length, features, hidden_sizes=(32,), bottleneck=8))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> Tensor:
        return torch.mean((model(windows) - windows) ** 2)

    before = float(loss())
    for _ in range(60):
        optimiser.zero_grad()
        current = loss()
        current.backward()
        optimiser.step()
    assert float(loss()) < 0.3 * before


def test_dense_ae_config_rejects_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="activation"):
        DenseAEConfig(L, C, activation="tanh")  # type: ignore[arg-type]


# --- LSTM autoencoder: reverse-order decoding -------------------------------------------------------------


def test_lstm_ae_first_decoded_step_is_the_reconstruction_of_the_last_input_step() -> None:
    torch.manual_seed(4)
    model = LSTMAE(LSTMAEConfig(12, 3, hidden_size=8)).eval()
    x = torch.randn(4, 12, 3)
    with torch.no_grad():
        first_emitted = model.decode(model.encode(x), n_steps=1)[:, 0]  # the decoder's very first step
        output = model(x)
    torch.testing.assert_close(output[:, -1], first_emitted, atol=1e-6, rtol=0)
    # Discriminates: without the flip the first emitted step would sit at time 0, and that one differs.
    assert not torch.allclose(output[:, 0], first_emitted, atol=1e-3)


class _ForwardOrder(nn.Module):
    """The same network with its output aligned to decoding order: what LSTMAE would be without the flip."""

    def __init__(self, inner: LSTMAE) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return torch.flip(self.inner(x), dims=(1,))


def _error_by_position_after_training(model: nn.Module, length: int, features: int) -> Tensor:
    """Train on white noise briefly; mean squared error per time position [length] on fresh noise."""
    generator = torch.Generator().manual_seed(5)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        x = torch.randn(32, length, features, generator=generator)
        optimiser.zero_grad()
        torch.mean((model(x) - x) ** 2).backward()
        optimiser.step()
    x = torch.randn(512, length, features, generator=generator)
    with torch.no_grad():
        return torch.mean((model(x) - x) ** 2, dim=(0, 2))


def test_lstm_ae_reconstructs_the_most_recent_step_best_because_it_decodes_it_first() -> None:
    # White noise cannot be compressed: the state keeps best what the encoder saw last. A reversed decoder
    # emits that step first, straight from the state; a forward-order one emits it last, after ten steps
    # of its own recurrence. Measured over seeds: reversed ~0.1, forward-order ~0.4-0.5, oldest step ~0.7.
    length, features, hidden = 10, 2, 16
    torch.manual_seed(6)
    reversed_errors = _error_by_position_after_training(
        LSTMAE(LSTMAEConfig(length, features, hidden)), length, features
    )
    torch.manual_seed(6)
    control = _ForwardOrder(LSTMAE(LSTMAEConfig(length, features, hidden)))
    forward_errors = _error_by_position_after_training(control, length, features)

    assert reversed_errors[-1] < 0.4 * reversed_errors[0], reversed_errors
    assert reversed_errors[-1] < 0.5 * forward_errors[-1], (reversed_errors, forward_errors)


# --- PCA ------------------------------------------------------------------------------------------------


def _subspace_windows(n: int, length: int, basis: Tensor, noise: float, seed: int) -> Tensor:
    """Windows [n, length, C] whose points lie in span(basis rows) + offset, plus Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    rank, features = basis.shape
    codes = 3 * torch.randn(n, length, rank, generator=generator)
    offset = torch.linspace(-1, 1, features)
    return codes @ basis + offset + noise * torch.randn(n, length, features, generator=generator)


def _orthonormal_rows(features: int, seed: int) -> Tensor:
    """A random orthonormal basis of R^features, one vector a row."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(features, features, generator=generator))
    return q.T.contiguous()


def test_pca_reconstructs_its_subspace_and_flags_a_point_off_it() -> None:
    features, rank = 8, 3
    rows = _orthonormal_rows(features, seed=7)
    basis, off_direction = rows[:rank], rows[rank]  # off_direction is orthogonal to the subspace
    model = PCA(PCAConfig(10, features, n_components=rank))
    model.fit_closed_form(_subspace_windows(40, 10, basis, noise=1e-4, seed=8))
    assert model.n_components == rank

    held_out = _subspace_windows(5, 10, basis, noise=0.0, seed=9)
    anomalous = held_out.clone()
    anomalous[:, 4] += 2.0 * off_direction
    with torch.no_grad():
        normal_error = ((model(held_out) - held_out) ** 2).sum(-1)  # [5, 10]
        anomalous_error = ((model(anomalous) - anomalous) ** 2).sum(-1)

    assert normal_error.max() < 1e-5
    torch.testing.assert_close(anomalous_error[:, 4], torch.full((5,), 4.0), atol=1e-3, rtol=0)
    assert anomalous_error[:, [0, 1, 2, 3, 5, 6, 7, 8, 9]].max() < 1e-5


def test_pca_fit_is_deterministic() -> None:
    windows = _correlated_windows(30, 10, 6, seed=10)
    first, second = PCA(PCAConfig(10, 6)), PCA(PCAConfig(10, 6))
    first.fit_closed_form(windows)
    second.fit_closed_form(windows.clone())
    for name, buffer in first.named_buffers():
        assert torch.equal(buffer, dict(second.named_buffers())[name]), name


def _windows_with_variances(variances: list[float], length: int, seed: int) -> Tensor:
    """Windows whose points have a sample covariance with exactly these eigenvalues (rotated at random)."""
    generator = torch.Generator().manual_seed(seed)
    features, rows = len(variances), 20 * length
    raw = torch.randn(rows, features, generator=generator, dtype=torch.float64)
    orthonormal, _ = torch.linalg.qr(raw - raw.mean(0))  # centred, orthonormal columns
    scaled = orthonormal * torch.tensor(variances, dtype=torch.float64).mul(rows - 1).sqrt()
    rotation, _ = torch.linalg.qr(torch.randn(features, features, generator=generator, dtype=torch.float64))
    return (scaled @ rotation).float().reshape(-1, length, features)


@pytest.mark.parametrize(
    ("target", "expected_rank"),
    [(0.4, 1), (0.75, 2), (0.85, 3), (0.93, 4), (0.97, 5), (1.0, 5)],  # 1.0: capped at C - 1
)
def test_pca_explained_variance_rule_picks_the_smallest_rank_reaching_the_target(
    target: float, expected_rank: int
) -> None:
    # Ratios 0.50, 0.30, 0.10, 0.05, 0.03, 0.02 -> cumulative 0.50, 0.80, 0.90, 0.95, 0.98, 1.00.
    windows = _windows_with_variances([25.0, 15.0, 5.0, 2.5, 1.5, 1.0], length=10, seed=11)
    model = PCA(PCAConfig(10, 6, explained_variance=target))
    model.fit_closed_form(windows)
    assert model.n_components == expected_rank
    expected_ratios = torch.tensor([0.50, 0.30, 0.10, 0.05, 0.03])[:expected_rank]
    torch.testing.assert_close(model.explained_variance_ratio, expected_ratios, atol=1e-5, rtol=0)


def test_pca_on_windows_captures_structure_over_time_that_points_cannot() -> None:
    # Every window is a scaled copy of one [L, C] pattern: rank 1 as flattened windows, while the points
    # inside a window spread over all C directions.
    length, features = 12, 5
    generator = torch.Generator().manual_seed(12)
    pattern = torch.randn(length, features, generator=generator)
    windows = torch.randn(50, 1, 1, generator=generator) * pattern
    by_window = PCA(PCAConfig(length, features, n_components=1, fit_on="windows"))
    by_point = PCA(PCAConfig(length, features, n_components=1, fit_on="points"))
    by_window.fit_closed_form(windows)
    by_point.fit_closed_form(windows)

    fresh = 2.5 * pattern.unsqueeze(0)
    with torch.no_grad():
        assert torch.mean((by_window(fresh) - fresh) ** 2) < 1e-8
        assert torch.mean((by_point(fresh) - fresh) ** 2) > 0.1


def test_pca_on_windows_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    model = PCA(PCAConfig(20, 5, fit_on="windows"))
    model.fit_closed_form(_correlated_windows(60, 20, 5, seed=13))
    path = export_onnx(model, tmp_path / "m.onnx", 20, 5)
    result = check_parity(model, path, 20, 5)
    assert result.passed, result.max_abs_diff


def test_pca_before_fitting_is_the_identity() -> None:
    model = PCA(PCAConfig(10, 6))
    x = torch.randn(2, 10, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x)


def test_pca_fitted_state_loads_into_a_fresh_module() -> None:
    windows = _correlated_windows(30, 10, 6, seed=14)
    fitted = PCA(PCAConfig(10, 6, explained_variance=0.6))
    fitted.fit_closed_form(windows)
    assert fitted.n_components < 6

    fresh = PCA(PCAConfig(10, 6, explained_variance=0.6))
    fresh.load_state_dict(fitted.state_dict())
    x = torch.randn(3, 10, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), fitted(x))


def test_pca_rejects_windows_of_the_wrong_shape_and_a_full_rank() -> None:
    model = PCA(PCAConfig(10, 6))
    with pytest.raises(ValueError, match="expected windows"):
        model.fit_closed_form(torch.randn(4, 10, 5))
    with pytest.raises(ValueError, match="n_components"):
        PCAConfig(10, 6, n_components=6)
