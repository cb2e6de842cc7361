"""TimesNet-AD: frozen periods, the association discrepancy minimax and its stop-gradients, export, bundle.

The three practitioner mistakes this family must avoid each have a guard here:
(1) minimax that cancels out: ``test_timesnet_ad_phase_losses_differ_and_their_discrepancy_gradients_do_not_cancel``;
(2) a prior that influences nothing: ``test_timesnet_ad_prior_scale_parameters_change_the_association_output``
    and the σ gradient checks of the minimise phase;
(3) a prior scale fed with position-encoded embeddings: ``test_timesnet_ad_prior_scale_sees_content_not_position``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from models.manifest import Manifest, ScoreDefinition
from models.registry import build_model
from models.runtime import load_bundle
from models.scoring import ModelOutput, normalise, score_series, score_windows
from models.timesnet_ad import TimesNetAD, TimesNetADConfig
from models.timesnet_blocks import TimesBlock, top_periods
from training.config import TrainConfig
from training.data import load_series
from training.export import check_parity, export_onnx
from training.pipeline import train_bundle

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "smd-machine-1-2" / "train.txt.gz"
SERIES_PARAMS = ("query", "key")  # what the series association S is made of
PRIOR_PARAMS = ("sigma",)  # what the prior association P's scale is made of


def tiny_config(**overrides: Any) -> TimesNetADConfig:
    values: dict[str, Any] = {
        "window_length": 40,
        "n_features": 5,
        "d_model": 16,
        "d_ff": 16,
        "n_blocks": 1,
        "n_attention_layers": 2,
        "n_heads": 2,
        "dropout": 0.0,
        "periods": (20, 8, 13),
    }
    values.update(overrides)
    return TimesNetADConfig(**values)


def periodic_windows(n: int, length: int, features: int, period: float, seed: int) -> Tensor:
    """Windows ``[n, length, features]``: a sine of ``period`` steps, random phase per window and sensor, noise."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(length, dtype=torch.float32)[None, :, None]
    phase = torch.rand(n, 1, features, generator=generator) * 2 * math.pi
    noise = 0.3 * torch.randn(n, length, features, generator=generator)
    return torch.sin(2 * math.pi * steps / period + phase) + noise


def trained_briefly(model: TimesNetAD, steps: int = 5, seed: int = 0) -> TimesNetAD:
    """A few minimax steps so σ, Q, K and the convolutions are no longer at their initial values."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = model.config
    model.train()
    for _ in range(steps):
        x = torch.randn(16, config.window_length, config.n_features, generator=generator)
        loss = model.training_loss(x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def twin(model: TimesNetAD, **changes: Any) -> TimesNetAD:
    """A model with the same weights and a changed config (e.g. λ = 0)."""
    other = TimesNetAD(dataclasses.replace(model.config, **changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


def gradients(model: TimesNetAD, loss: Tensor) -> dict[str, Tensor]:
    """d loss / d parameter for every parameter; zeros where the loss does not reach it."""
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads, strict=True)}


def pick(grads: dict[str, Tensor], kinds: tuple[str, ...]) -> dict[str, Tensor]:
    """The weight gradients of the named projections in every layer (a key bias never matters to a softmax)."""
    chosen = {n: g for n, g in grads.items() if any(n.endswith(f"attention.{k}.weight") for k in kinds)}
    assert chosen, kinds
    return chosen


# ---- shapes, independence, the prior ---------------------------------------------------------------------------


def test_timesnet_ad_maps_windows_to_a_reconstruction_and_association_weights_summing_to_one() -> None:
    torch.manual_seed(0)
    model = TimesNetAD(TimesNetADConfig(window_length=100, n_features=38)).eval()
    with torch.no_grad():
        reconstruction, association = model(torch.randn(3, 100, 38))
    assert reconstruction.shape == (3, 100, 38)
    assert association.shape == (3, 100)
    assert bool((association >= 0).all())
    torch.testing.assert_close(association.sum(dim=1), torch.ones(3))
    assert model.output_names == ["reconstruction", "association"]


def test_timesnet_ad_output_of_a_sample_does_not_depend_on_its_batch_mates() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config()))
    x = torch.randn(5, 40, 5)
    with torch.no_grad():
        alone = model(x[:1])
        together = model(x)
        replaced = model(torch.cat([x[:1], torch.randn(4, 40, 5) * 3]))
    for out in (together, replaced):
        for got, expected in zip(out, alone, strict=True):
            torch.testing.assert_close(got[:1], expected, rtol=1e-5, atol=1e-6)


def test_timesnet_ad_prior_is_a_row_normalised_gaussian_over_the_distance() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config()))
    with torch.no_grad():
        _, _, priors = model.encode(torch.randn(2, 40, 5))
    prior = priors[0]  # [B, H, L, L]
    torch.testing.assert_close(prior.sum(dim=-1), torch.ones(2, 2, 40))
    row = prior[0, 0, 20]
    assert int(row.argmax()) == 20
    torch.testing.assert_close(row[21:30], row[11:20].flip(0))  # symmetric in i - j
    assert bool((row[20:39] >= row[21:40]).all())  # falls with the distance


def test_timesnet_ad_association_is_the_softmax_over_positions_of_the_negative_scaled_discrepancy() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config(temperature=7.0)))
    x = torch.randn(3, 40, 5)
    with torch.no_grad():
        _, series, priors = model.encode(x)
        _, association = model(x)
    eps = 1e-4
    per_layer = []
    for p, s in zip(priors, series, strict=True):
        kl_ps = (p * (torch.log(p + eps) - torch.log(s + eps))).sum(-1)
        kl_sp = (s * (torch.log(s + eps) - torch.log(p + eps))).sum(-1)
        per_layer.append((kl_ps + kl_sp).mean(dim=1))  # mean over heads: [B, L]
    discrepancy = torch.stack(per_layer).mean(dim=0)  # mean over layers
    torch.testing.assert_close(association, torch.softmax(-7.0 * discrepancy, dim=1), rtol=1e-4, atol=1e-6)


def test_timesnet_ad_config_rejects_bad_periods_heads_and_lambda() -> None:
    with pytest.raises(ValueError, match="periods"):
        tiny_config(periods=(20, 20))
    with pytest.raises(ValueError, match="periods"):
        tiny_config(periods=(41,))
    with pytest.raises(ValueError, match="n_heads"):
        tiny_config(n_heads=3)
    with pytest.raises(ValueError, match="lambda"):
        tiny_config(lambda_discrepancy=-1.0)


# ---- frozen periods ----------------------------------------------------------------------------------------------


def test_timesnet_ad_fit_periods_finds_a_known_period_and_records_it_in_the_hyperparameters() -> None:
    built = build_model("timesnet_ad", 100, 4, d_model=8, d_ff=8, n_heads=2, top_k=3)
    before = built.hyperparameters()["periods"]
    built.module.fit_periods(periodic_windows(64, 100, 4, period=20.0, seed=0))
    periods = built.module.config.periods
    assert periods[0] == 20 and len(periods) == 3 and periods != before
    assert all(block.periods == periods for block in built.module.blocks)
    assert tuple(built.hyperparameters()["periods"]) == periods


def reference_inception(module: torch.nn.Module, x: Tensor) -> Tensor:
    """TSLib's Inception_Block_V1: the mean of separate centred convolutions (one bias here)."""
    outs = [F.conv2d(x, kernel, padding=i) for i, kernel in enumerate(module.kernels)]
    return torch.stack(outs, dim=-1).mean(-1) + module.bias[None, :, None, None]


def reference_timesblock(block: TimesBlock, x: Tensor, k: int) -> tuple[Tensor, tuple[int, ...]]:
    """TimesNet's data-dependent block: FFT top-k over the batch, per-sample FFT amplitude weights."""
    batch, length, d_model = x.shape
    amplitude = torch.fft.rfft(x, dim=1).abs()  # [B, F, D]
    strength = amplitude.mean(0).mean(-1)
    strength[0] = 0
    bins = torch.topk(strength, k).indices
    periods = tuple(length // int(f) for f in bins)
    weights = torch.softmax(amplitude.mean(-1)[:, bins], dim=1)  # [B, k]
    outs = []
    for period in periods:
        rows = math.ceil(length / period)
        padded = torch.cat([x, torch.zeros(batch, rows * period - length, d_model)], dim=1)
        grid = padded.reshape(batch, rows, period, d_model).permute(0, 3, 1, 2)
        hidden = F.gelu(reference_inception(block.conv[0], grid))
        out = reference_inception(block.conv[2], hidden)
        outs.append(out.permute(0, 2, 3, 1).reshape(batch, -1, d_model)[:, :length])
    return (torch.stack(outs, dim=-1) * weights[:, None, None, :]).sum(-1) + x, periods


def test_timesnet_block_at_frozen_periods_equals_the_fft_timesnet_block_at_those_periods() -> None:
    length, d_model = 100, 8
    generator = torch.Generator().manual_seed(3)
    steps = torch.arange(length, dtype=torch.float32)[None, :, None]
    x = 1e-3 * torch.randn(4, length, d_model, generator=generator)
    for frequency, amplitude in ((3, 0.03), (5, 0.02), (10, 0.012)):  # periods 33 (padded to 102), 20, 10
        scale = amplitude * (0.5 + torch.rand(4, 1, d_model, generator=generator))
        phase = torch.rand(4, 1, d_model, generator=generator) * 2 * math.pi
        x = x + scale * torch.cos(2 * math.pi * frequency * steps / length + phase)
    torch.manual_seed(0)
    probe = TimesBlock(length, d_model, 16, 3, (1,))
    expected, periods = reference_timesblock(probe, x, k=3)
    assert sorted(periods) == [10, 20, 33]
    fitted = top_periods(torch.fft.rfft(x, dim=1).abs().mean(dim=(0, 2)), length, 3)
    assert fitted == periods
    probe.set_periods(fitted)
    weights = probe.period_weights(x)
    assert float((weights.max(dim=1).values - weights.min(dim=1).values).min()) < 0.9  # a real mixture
    with torch.no_grad():
        torch.testing.assert_close(probe(x), expected, rtol=1e-4, atol=1e-5)


# ---- minimax, stop-gradients and the three mistakes ---------------------------------------------------------------


def test_timesnet_ad_minimise_phase_moves_the_prior_not_the_series_association() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config(lambda_discrepancy=3.0)))
    reconstruction_only = twin(model, lambda_discrepancy=0.0)
    x = torch.randn(8, 40, 5)
    with_dis = gradients(model, model.phase_losses(x)[0])
    without = gradients(reconstruction_only, reconstruction_only.phase_losses(x)[0])
    # The discrepancy term adds nothing to Q/K: their gradient is the reconstruction's alone.
    for name, grad in pick(with_dis, SERIES_PARAMS).items():
        torch.testing.assert_close(grad, without[name], rtol=0, atol=0)
        assert float(grad.abs().sum()) > 0  # …which is not zero: S does serve the reconstruction
    for name, grad in pick(with_dis, PRIOR_PARAMS).items():
        assert float(grad.abs().sum()) > 0, name  # the prior is pulled toward S
        assert float(without[name].abs().sum()) == 0  # and only by the discrepancy


def test_timesnet_ad_maximise_phase_moves_the_series_association_not_the_prior() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config(lambda_discrepancy=3.0)))
    reconstruction_only = twin(model, lambda_discrepancy=0.0)
    x = torch.randn(8, 40, 5)
    with_dis = gradients(model, model.phase_losses(x)[1])
    without = gradients(reconstruction_only, reconstruction_only.phase_losses(x)[1])
    for name, grad in pick(with_dis, PRIOR_PARAMS).items():
        assert float(grad.abs().sum()) == 0, name
    for name, grad in pick(with_dis, SERIES_PARAMS).items():
        assert not torch.allclose(grad, without[name], rtol=1e-3, atol=1e-7), name  # S is pushed from P


def test_timesnet_ad_one_backward_of_training_loss_equals_the_two_backward_official_scheme() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config()))
    x = torch.randn(8, 40, 5)
    model.zero_grad()
    minimise, maximise = model.phase_losses(x)
    minimise.backward(retain_graph=True)
    maximise.backward()
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.training_loss(x).backward()
    summed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert accumulated.keys() == summed.keys()
    for name in summed:
        torch.testing.assert_close(summed[name], accumulated[name], rtol=1e-5, atol=1e-7)


def test_timesnet_ad_phase_losses_differ_and_their_discrepancy_gradients_do_not_cancel() -> None:
    """Mistake 1: identical (or un-detached) phase losses make rec + λD and rec − λD sum to 2·rec."""
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config(lambda_discrepancy=3.0)))
    x = torch.randn(8, 40, 5)
    minimise, maximise = model.phase_losses(x)
    assert float(minimise - maximise) > 1e-3  # = 2λ·discrepancy
    reconstruction_only = twin(model, lambda_discrepancy=0.0)
    full = gradients(model, model.training_loss(x))
    plain = gradients(reconstruction_only, reconstruction_only.training_loss(x))  # ∇(2·rec)
    for name, grad in {**pick(full, SERIES_PARAMS), **pick(full, PRIOR_PARAMS)}.items():
        assert not torch.allclose(grad, plain[name], rtol=1e-3, atol=1e-7), name


def test_timesnet_ad_prior_scale_parameters_change_the_association_output() -> None:
    """Mistake 2: a prior that nothing depends on. Moving σ's weights must move the anomaly weights."""
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config()))
    x = torch.randn(4, 40, 5)
    with torch.no_grad():
        reconstruction, association = model(x)
        for layer in model.layers:
            layer.attention.sigma.bias.add_(1.0)
        moved_reconstruction, moved_association = model(x)
    assert float((moved_association - association).abs().max()) > 1e-3
    torch.testing.assert_close(moved_reconstruction, reconstruction)  # P scores, it does not reconstruct


def test_timesnet_ad_prior_scale_sees_content_not_position() -> None:
    """Mistake 3: σ computed from position-encoded embeddings can learn a scale per window slot.

    σ reads the content features only: the position table reaches S but not σ, and shifting a window's
    content in time shifts σ with it (the token conv is circular, so content features are shift-equivariant).
    """
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config()))
    x = torch.randn(2, 40, 5)
    with torch.no_grad():
        _, series, priors = model.encode(x)
        sigmas = model.prior_scales(x)
        shifted = model.prior_scales(torch.roll(x, shifts=7, dims=1))
        model.positions.mul_(-1.0).add_(0.5)
        _, moved_series, moved_priors = model.encode(x)
        moved_sigmas = model.prior_scales(x)
    assert float((moved_series[0] - series[0]).abs().max()) > 1e-3  # the positions are in use…
    for before, after in zip(sigmas, moved_sigmas, strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0)  # …but not by σ
    torch.testing.assert_close(moved_priors[0], priors[0], rtol=0, atol=0)
    for sigma, sigma_of_shifted in zip(sigmas, shifted, strict=True):
        torch.testing.assert_close(
            sigma_of_shifted, torch.roll(sigma, shifts=7, dims=2), rtol=1e-4, atol=1e-6
        )


# ---- score definition ---------------------------------------------------------------------------------------------


def test_timesnet_ad_score_definition_weights_the_error_by_association_unless_lambda_is_zero() -> None:
    torch.manual_seed(0)
    model = trained_briefly(TimesNetAD(tiny_config(lambda_discrepancy=3.0, temperature=25.0)))
    definition = model.score_definition()
    assert definition.kind == "association_weighted_mse" and definition.temperature == 25.0
    x = torch.randn(3, 40, 5)
    with torch.no_grad():
        reconstruction, association = (t.numpy() for t in model(x))
    windows = x.numpy()
    mse = np.mean(np.square(windows - reconstruction), axis=-1)
    weighted = score_windows(windows, ModelOutput(reconstruction, association), definition)
    np.testing.assert_allclose(weighted.scores, mse * association, rtol=1e-5)

    plain_model = twin(model, lambda_discrepancy=0.0)
    assert plain_model.score_definition() == ScoreDefinition()
    plain = score_windows(windows, ModelOutput(reconstruction, association), plain_model.score_definition())
    np.testing.assert_allclose(plain.scores, mse, rtol=1e-5)
    np.testing.assert_allclose(plain.contributions, weighted.contributions)  # sensors: reconstruction error


# ---- export -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[TimesNetAD, Path]:
    """A briefly trained L=100, C=38 model with periods fitted on period-20 data, exported once."""
    torch.manual_seed(0)
    config = TimesNetADConfig(window_length=100, n_features=38, d_model=16, d_ff=16, n_heads=2, top_k=3)
    model = TimesNetAD(config)
    model.fit_periods(periodic_windows(32, 100, 38, period=20.0, seed=1))
    model = trained_briefly(model, steps=3)
    path = export_onnx(
        model, tmp_path_factory.mktemp("onnx") / "tad.onnx", 100, 38, output_names=model.output_names
    )
    return model, path


def test_timesnet_ad_onnx_export_at_frozen_periods_matches_pytorch_for_both_outputs(
    exported: tuple[TimesNetAD, Path],
) -> None:
    model, path = exported
    assert model.config.periods[0] == 20
    result = check_parity(model, path, 100, 38, batch_sizes=(1, 7, 64))
    assert result.output_names == ["reconstruction", "association"]
    assert set(result.max_abs_diff) == {1, 7, 64}
    assert result.passed, result.max_abs_diff
    assert result.opset >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = periodic_windows(5, 100, 38, period=20.0, seed=2)  # data at the frozen periods, too
    got = session.run(None, {"window": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4)


def test_timesnet_ad_onnx_output_of_a_window_is_identical_alone_and_in_a_batch(
    exported: tuple[TimesNetAD, Path],
) -> None:
    """The streaming parity rule needs bit-identical windows, for both outputs, whatever batch they land in."""
    _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((33, 100, 38)) * 5).astype(np.float32)
    x[:, :, 7] = 12.5  # flat channels are where rounding would be amplified
    together = session.run(None, {"window": x})
    alone = [session.run(None, {"window": x[i : i + 1]}) for i in range(len(x))]
    for index in range(2):
        assert np.array_equal(together[index], np.concatenate([out[index] for out in alone]))


# ---- end to end ---------------------------------------------------------------------------------------------------


def test_timesnet_ad_pipeline_writes_an_association_weighted_bundle_the_runtime_scores(
    tmp_path: Path,
) -> None:
    bundle = train_bundle(
        TrainConfig(
            model="timesnet_ad",
            train_path=SAMPLE,
            out_dir=tmp_path,
            version="test",
            max_rows=3000,
            epochs=1,
            train_stride=10,
            hyperparameters={"d_model": 16, "d_ff": 16, "n_blocks": 1, "n_heads": 2},
            progress=False,
        )
    )
    manifest = Manifest.load(bundle)
    assert manifest.score.kind == "association_weighted_mse" and manifest.score.temperature == 50.0
    assert manifest.onnx.output_names == ["reconstruction", "association"]
    assert len(manifest.hyperparameters["periods"]) == 3  # the fitted periods, frozen in the graph
    assert manifest.parity.passed

    loaded = load_bundle(bundle)
    series = normalise(load_series(SAMPLE, 3000), manifest.normalisation)[-600:]
    L, stride = manifest.window_length, manifest.stride
    result = score_series(series, L, stride, loaded.run, manifest.score)
    assert np.isfinite(result.scores).all()
    np.testing.assert_allclose(result.contributions.sum(axis=1), 1.0, rtol=1e-5)
    plain = score_series(series, L, stride, loaded.run, ScoreDefinition())
    assert not np.allclose(result.scores, plain.scores)  # the association weights are applied
