"""NRMSE, R^2 and memory capacity."""

import pytest
import torch

from carousel.esn import Reservoir, memory_capacity, nrmse, r2_score, rmse


def test_error_measures_by_hand():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pred = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert rmse(pred, target) == pytest.approx(0.5)
    std = target.std(unbiased=False).item()
    assert nrmse(pred, target) == pytest.approx(0.5 / std)
    assert nrmse(pred, target, normalization="var") == pytest.approx(0.5 / std**2)
    assert nrmse(pred, target, normalization="range") == pytest.approx(0.5 / 3)
    assert nrmse(pred, target, normalization=2.0) == pytest.approx(0.25)
    assert r2_score(pred, target) == pytest.approx(1 - 1 / 5)
    assert r2_score(target, target) == 1.0


def test_metric_errors():
    with pytest.raises(ValueError, match="same shape"):
        rmse(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="constant target"):
        nrmse(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="R\\^2 is undefined"):
        r2_score(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="normalization must be one of"):
        nrmse(torch.zeros(3), torch.arange(3.0), normalization="max")


def test_memory_capacity_bounds_and_linear_reservoir():
    # Near-linear reservoir (tiny inputs keep tanh in its linear range), spectral radius near
    # 1: MC approaches the number of units (Jaeger 2001, GMD report 152); never above it.
    res = Reservoir(1, 20, spectral_radius=0.95, input_scaling=1e-3, connectivity=1.0, seed=0)
    mc = memory_capacity(res, max_delay=60, train_steps=3000, test_steps=1500)
    assert mc.per_delay.shape == (60,)
    assert 14 < mc.total <= 20.5
    assert bool((mc.per_delay[:5] > 0.95).all())
    # A strongly saturated, contracting reservoir remembers less.
    sat = Reservoir(1, 20, spectral_radius=0.3, input_scaling=3.0, connectivity=1.0, seed=0)
    assert memory_capacity(sat, max_delay=60).total < mc.total
    with pytest.raises(ValueError, match="input_size=1 and no feedback"):
        memory_capacity(Reservoir(2, 10))
