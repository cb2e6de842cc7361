"""Loading, the chronological split, normalisation and windows."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, fit_normalisation, load_series, make_windows, split_chronological


def test_load_series_reads_csv_gzip_and_npy_alike(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    text = "\n".join(",".join(f"{v:.9g}" for v in row) for row in array)
    (tmp_path / "a.txt").write_text(text)
    with gzip.open(tmp_path / "a.txt.gz", "wt") as handle:
        handle.write(text)
    np.save(tmp_path / "a.npy", array)
    for name in ("a.txt", "a.txt.gz", "a.npy"):
        np.testing.assert_allclose(load_series(tmp_path / name), array, rtol=1e-6)


def test_load_series_rejects_non_finite_values_and_bad_shapes(tmp_path: Path) -> None:
    (tmp_path / "nan.txt").write_text("1,2\nnan,3\n")
    with pytest.raises(DataError, match="NaN"):
        load_series(tmp_path / "nan.txt")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(DataError, match="shape"):
        load_series(tmp_path / "flat.npy")


def test_split_holds_out_the_last_rows_chronologically() -> None:
    series = np.arange(1000, dtype=np.float32).reshape(500, 2)
    split = split_chronological(series, 0.2, window_length=50)
    assert split.train.shape == (400, 2) and split.validation.shape == (100, 2)
    assert split.validation[0, 0] == series[400, 0]  # validation follows training in time


def test_normalisation_uses_training_rows_only_and_floors_flat_sensors() -> None:
    train = np.stack([np.arange(10.0), np.full(10, 3.0)], axis=1).astype(np.float32)
    norm = fit_normalisation(train, min_scale=1e-3)
    assert norm.mean == pytest.approx([4.5, 3.0])
    assert norm.scale[0] == pytest.approx(np.arange(10.0).std())
    assert norm.scale[1] == 1e-3


def test_make_windows_includes_the_last_window() -> None:
    series = np.arange(23, dtype=np.float32)[:, None]
    windows = make_windows(series, 10, 5)
    assert windows.shape == (4, 10, 1)
    assert [w[0, 0] for w in windows] == [0, 5, 10, 13]
