"""Gradient training with early stopping on the held-out validation loss (or a closed-form fit)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.data import F32


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; no bundle is written from such a model."""


@dataclass
class TrainResult:
    epochs_run: int
    best_validation_loss: float
    wall_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int, threads: int) -> None:
    """Fixed seeds and deterministic kernels: the same config gives the same weights on CPU."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def reconstruction(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reconstruction ``[B, L, C]``: the output, or its first element for multi-output models."""
    out = module(x)
    first: torch.Tensor = out[0] if isinstance(out, tuple | list) else out
    return first


def training_loss(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    custom = getattr(module, "training_loss", None)
    if callable(custom):
        loss: torch.Tensor = custom(x)
        return loss
    return nn.functional.mse_loss(reconstruction(module, x), x)


def validation_loss(module: nn.Module, windows: F32, batch_size: int) -> float:
    """Mean squared reconstruction error over validation windows ``[N, L, C]`` (eval mode)."""
    module.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            x = torch.from_numpy(windows[start : start + batch_size])
            total += float(nn.functional.mse_loss(reconstruction(module, x), x, reduction="sum"))
            count += x.numel()
    return total / max(count, 1)


def train_module(
    module: nn.Module,
    train_windows: F32,
    validation_windows: F32 | None,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    seed: int,
    progress: bool,
    stop_after: int | None = None,
) -> TrainResult:
    """Fit ``module`` to reconstruct ``train_windows``; keep the weights with the best validation loss.

    Without validation windows (a cross-fitting fold model, ``training.crossfit``, whose held-out rows must not
    choose its weights): the weights after ``stop_after`` epochs of the same ``epochs``-long schedule."""
    started = time.perf_counter()
    if validation_windows is None and stop_after is None:
        raise ValueError("without validation windows, say after how many epochs to stop")
    if not getattr(module, "trainable", True):
        module.fit_closed_form(torch.from_numpy(train_windows))  # type: ignore[operator]
        if validation_windows is None:
            return TrainResult(1, math.nan, time.perf_counter() - started, [])
        fitted_loss = validation_loss(module, validation_windows, batch_size)
        history = [{"epoch": 1.0, "train_loss": math.nan, "validation_loss": fitted_loss}]
        return TrainResult(1, fitted_loss, time.perf_counter() - started, history)

    optimiser = torch.optim.Adam(module.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(train_windows)
    best_loss, best_state, stale, history = math.inf, copy.deepcopy(module.state_dict()), 0, []
    epoch = 0
    for epoch in range(1, min(epochs, stop_after or epochs) + 1):  # noqa: B007 (reported after the loop)
        module.train()
        order = torch.randperm(len(data), generator=generator)
        running, seen = 0.0, 0
        batches = range(0, len(data), batch_size)
        # disable=None: a live bar on a terminal, nothing in a log file (the epoch summary line still prints)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            disable=None if progress else True,
            leave=False,
        )
        for start in bar:
            x = data[order[start : start + batch_size]]
            loss = training_loss(module, x)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(module.parameters(), 5.0)
            optimiser.step()
            running += float(loss.detach()) * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        scheduler.step()
        if validation_windows is None:
            if not math.isfinite(running):
                raise TrainingDiverged(f"epoch {epoch}: loss is not finite; no bundle written")
            history.append({"epoch": float(epoch), "train_loss": running / seen, "validation_loss": math.nan})
            continue  # no validation to choose by: the weights it ends with are kept
        val = validation_loss(module, validation_windows, batch_size)
        if not (math.isfinite(val) and math.isfinite(running)):
            if math.isfinite(best_loss):
                history.append({"epoch": float(epoch), "train_loss": math.nan, "validation_loss": math.nan})
                break  # keep the best finite epoch
            raise TrainingDiverged(
                f"epoch {epoch}: loss is not finite (learning rate {learning_rate} too high?); no bundle written"
            )
        history.append({"epoch": float(epoch), "train_loss": running / seen, "validation_loss": val})
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}  train {running / seen:.5f}  validation {val:.5f}")
        if val < best_loss - 1e-7:
            best_loss, best_state, stale = val, copy.deepcopy(module.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    if validation_windows is None:
        module.eval()
        return TrainResult(epoch, math.nan, time.perf_counter() - started, history)
    module.load_state_dict(best_state)
    module.eval()
    return TrainResult(epoch, best_loss, time.perf_counter() - started, history)
