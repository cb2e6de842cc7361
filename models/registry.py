"""Architectures by name (imports torch lazily, through the model modules; never used by the service).

Every architecture module defines a frozen config dataclass with at least ``window_length`` and
``n_features``, and an ``nn.Module`` built from it whose ``forward`` maps ``[B, L, C] -> [B, L, C]``
(normalised space), keeping samples of a batch independent. Optional hooks on the module:

- ``prepare_for_export() -> None``: fold training-time structure (e.g. re-parameterised kernels) before export.
- ``fit_closed_form(windows: Tensor[N, L, C]) -> None`` with ``trainable = False``: fitted, not trained (PCA).
- ``training_loss(x: Tensor[B, L, C]) -> Tensor``: the loss to minimise, when it is not plain reconstruction MSE
  (e.g. the association-discrepancy minimax, whose two phases are expressed with stop-gradients).
- ``score_definition() -> models.manifest.ScoreDefinition`` and ``output_names: list[str]``: when the graph has
  outputs beyond the reconstruction (e.g. association weights ``[B, L]``); ``forward`` then returns a tuple in
  that order, the reconstruction first.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "tvnet": ("models.tvnet", "TVNet", "TVNetConfig"),
    "convtimenet": ("models.convtimenet", "ConvTimeNet", "ConvTimeNetConfig"),
    "dense_ae": ("models.dense_ae", "DenseAE", "DenseAEConfig"),
    "lstm_ae": ("models.lstm_ae", "LSTMAE", "LSTMAEConfig"),
    "pca": ("models.pca", "PCA", "PCAConfig"),
    "timesnet_ad": ("models.timesnet_ad", "TimesNetAD", "TimesNetADConfig"),
}


class UnknownArchitecture(KeyError):
    pass


class UnknownHyperparameter(ValueError):
    """A hyper-parameter the architecture does not have, named with the ones it has."""


@dataclass(frozen=True)
class BuiltModel:
    module: Any  # torch.nn.Module
    config: Any  # the architecture's frozen config dataclass

    def hyperparameters(self) -> dict[str, Any]:
        """The module's config when it has one (it may have been refined by fitting, e.g. frozen periods)."""
        config = getattr(self.module, "config", None)
        if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
            config = self.config
        return dataclasses.asdict(config)


def build_model(name: str, window_length: int, n_features: int, **overrides: Any) -> BuiltModel:
    """Build architecture ``name`` for windows ``[B, window_length, n_features]``."""
    try:
        module_name, class_name, config_name = ARCHITECTURES[name]
    except KeyError as exc:
        raise UnknownArchitecture(f"unknown model {name!r}; known: {sorted(ARCHITECTURES)}") from exc
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - known
    if unknown:
        raise UnknownHyperparameter(
            f"{name}: unknown hyper-parameters {sorted(unknown)}; known: {sorted(known)}"
        )
    config = config_cls(window_length=window_length, n_features=n_features, **overrides)
    return BuiltModel(module=getattr(module, class_name)(config), config=config)
