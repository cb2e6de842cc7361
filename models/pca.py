"""PCA reconstruction: fitted in closed form on training windows, never trained by gradient descent.

The reconstruction of a row ``r`` (a time step's C-vector, or a whole flattened window) is its projection
onto the principal subspace, ``(r - mean) @ components.T @ components + mean``; the score built on it is the
squared prediction error (SPE / Q statistic) of classical process monitoring. Two matrix products and two
adds: the ONNX graph is MatMul/Add only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

FIT_CHUNK_ROWS = 65_536  # rows per float64 Gram update: bounds fit memory for stride-1 window sets


@dataclass(frozen=True)
class PCAConfig:
    """PCA over ``fit_on`` rows: ``"points"`` (each time step, dim C) or ``"windows"`` (flattened, dim L·C).

    ``n_components`` fixes the rank; when None the rank is the smallest that explains
    ``explained_variance`` of the training variance, capped at dim - 1 so the map is never the identity.
    Default 0.9 on points: on 14 SMD machines point-wise AUC-PR hardly moved between 0.5 and 0.99 (0.41 to
    0.43), and 0.9 keeps 6 to 17 of 38 components. ``"windows"`` fits a dense (L·C)² covariance (3800² at
    L=100, C=38: seconds, and 58 MB of identity buffer before fitting) and did not score better there.
    """

    window_length: int
    n_features: int
    n_components: int | None = None
    explained_variance: float = 0.9
    fit_on: Literal["points", "windows"] = "points"

    def __post_init__(self) -> None:
        if self.window_length < 1 or self.n_features < 1:
            raise ValueError("window_length and n_features must be >= 1")
        if self.fit_on not in ("points", "windows"):
            raise ValueError(f"fit_on must be 'points' or 'windows', got {self.fit_on!r}")
        if self.row_dim < 2:
            raise ValueError(f"PCA on {self.fit_on} needs rows of at least 2 values, got {self.row_dim}")
        if not 0.0 < self.explained_variance <= 1.0:
            raise ValueError(f"explained_variance must be in (0, 1], got {self.explained_variance}")
        if self.n_components is not None and not 1 <= self.n_components <= self.row_dim - 1:
            raise ValueError(f"n_components must be in [1, {self.row_dim - 1}], got {self.n_components}")

    @property
    def row_dim(self) -> int:
        """Length of one fitted row: C for points, L·C for windows."""
        return self.n_features if self.fit_on == "points" else self.window_length * self.n_features


class PCA(nn.Module):
    """Linear reconstruction ``x: [B, L, C] -> [B, L, C]`` by projection onto the fitted principal subspace.

    Buffers: ``mean`` [D], ``components`` [k, D] (orthonormal rows), ``explained_variance_ratio`` [k].
    Before ``fit_closed_form`` the components are the identity (k = D), so the map is the identity and every
    score is zero: an unfitted model is visibly useless rather than silently wrong.
    """

    trainable = False
    mean: Tensor
    components: Tensor
    explained_variance_ratio: Tensor

    def __init__(self, config: PCAConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.row_dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.eye(dim))
        self.register_buffer("explained_variance_ratio", torch.full((dim,), 1.0 / dim))

    @property
    def n_components(self) -> int:
        """The rank in use (D before fitting)."""
        return int(self.components.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, C] -> reconstruction [B, L, C]."""
        length, features, dim = self.config.window_length, self.config.n_features, self.config.row_dim
        rows = x.reshape(-1, length * features // dim, dim)  # [B, R, D]: R = L (points) or 1 (windows)
        codes = (rows - self.mean) @ self.components.transpose(0, 1)  # [B, R, k]
        projected = codes @ self.components + self.mean  # [B, R, D]
        return projected.reshape(-1, length, features)

    @torch.no_grad()
    def fit_closed_form(self, windows: Tensor) -> None:
        """Fit mean and principal components on training windows ``[N, L, C]`` (normalised).

        Deterministic: a two-pass float64 covariance on CPU, a symmetric eigendecomposition, and a sign
        convention (each component's largest-magnitude entry is positive). Raises ValueError on a wrong shape,
        fewer than two rows, or data without variance.
        """
        length, features, dim = self.config.window_length, self.config.n_features, self.config.row_dim
        if windows.ndim != 3 or tuple(windows.shape[1:]) != (length, features):
            raise ValueError(f"expected windows [N, {length}, {features}], got {list(windows.shape)}")
        rows = windows.detach().reshape(-1, dim)
        n_rows = rows.shape[0]
        if n_rows < 2:
            raise ValueError(f"PCA needs at least 2 rows to fit, got {n_rows}")

        chunks = torch.split(rows, FIT_CHUNK_ROWS)
        mean = torch.zeros(dim, dtype=torch.float64)
        for chunk in chunks:
            mean += chunk.to("cpu", torch.float64).sum(dim=0)
        mean /= n_rows
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for chunk in chunks:
            centred = chunk.to("cpu", torch.float64) - mean
            gram += centred.transpose(0, 1) @ centred
        covariance = gram / (n_rows - 1)

        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues = eigenvalues.flip(0).clamp_min(0.0)
        eigenvectors = eigenvectors.flip(1)
        total = float(eigenvalues.sum())
        if not total > 0.0:
            raise ValueError("training windows have no variance; PCA has nothing to fit")
        ratio = eigenvalues / total
        rank = self._choose_rank(ratio)

        components = eigenvectors[:, :rank].transpose(0, 1).contiguous()  # [k, D]
        pivots = components.abs().argmax(dim=1)
        signs = torch.sign(components[torch.arange(rank), pivots])
        components *= signs.unsqueeze(1)

        device = self.mean.device
        self.mean = mean.to(device, torch.float32)
        self.components = components.to(device, torch.float32)
        self.explained_variance_ratio = ratio[:rank].to(device, torch.float32)

    def _choose_rank(self, ratio: Tensor) -> int:
        """Fixed ``n_components``, else the smallest rank reaching ``explained_variance``, at most D - 1."""
        if self.config.n_components is not None:
            return self.config.n_components
        cumulative = ratio.cumsum(dim=0)
        # The tolerance keeps a threshold met exactly (up to rounding) from taking one extra component.
        short = int((cumulative < self.config.explained_variance - 1e-9).sum())
        return max(1, min(short + 1, self.config.row_dim - 1))

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The fitted rank is data-dependent, so a fresh module must take the saved shapes before loading.
        for name in ("components", "explained_variance_ratio"):
            saved = state_dict.get(prefix + name)
            current: Tensor = getattr(self, name)
            if not isinstance(saved, Tensor) or saved.ndim != current.ndim or saved.shape == current.shape:
                continue
            if saved.shape[1:] == current.shape[1:]:  # same row length D, another rank k
                setattr(self, name, torch.empty(saved.shape, device=current.device, dtype=current.dtype))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
