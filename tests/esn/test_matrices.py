"""Named random streams, random matrices and spectral radii."""

import pytest
import torch

from carousel.esn import Reservoir, matrices, random_matrix, random_stream, spectral_radius
from carousel.esn.matrices import arnoldi_spectral_radius


@pytest.fixture(autouse=True)
def _one_thread():
    # LAPACK's eigensolver is slow with several threads on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_streams_are_reproducible_and_independent():
    a = torch.rand(5, generator=random_stream(3, "input"))
    assert torch.equal(a, torch.rand(5, generator=random_stream(3, "input")))
    assert not torch.equal(a, torch.rand(5, generator=random_stream(3, "bias")))
    assert not torch.equal(a, torch.rand(5, generator=random_stream(4, "input")))


def test_sparse_and_dense_are_the_same_matrix():
    dense = random_matrix(300, 200, connectivity=0.05, generator=random_stream(0, "w"))
    sparse = random_matrix(
        300, 200, connectivity=0.05, sparse=True, generator=random_stream(0, "w")
    )
    assert sparse.layout == torch.sparse_csr
    assert sparse.col_indices().dtype == torch.int32
    assert torch.equal(dense, sparse.to_dense())
    assert 0.04 < (dense != 0).double().mean().item() < 0.06


@pytest.mark.parametrize("distribution", ["normal", "uniform", "bernoulli"])
def test_distributions(distribution):
    w = random_matrix(50, 40, distribution=distribution, generator=random_stream(0, "w"))
    if distribution == "uniform":
        assert w.abs().max() <= 1
    if distribution == "bernoulli":
        assert set(w.unique().tolist()) == {-1.0, 1.0}


def test_arnoldi_matches_exact_eigenvalues():
    w = random_matrix(250, 250, connectivity=0.05, generator=random_stream(1, "w"))
    exact = spectral_radius(w, method="exact")
    assert exact == pytest.approx(float(torch.linalg.eigvals(w).abs().max()))
    est = arnoldi_spectral_radius(w, generator=random_stream(1, "a"))
    assert est == pytest.approx(exact, rel=1e-3)
    est_csr = spectral_radius(
        random_matrix(250, 250, connectivity=0.05, sparse=True, generator=random_stream(1, "w")),
        method="arnoldi",
    )
    assert est_csr == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize(
    ("units", "sparse", "exact_max"), [(80, False, 512), (250, True, 512), (250, True, 100)]
)
def test_reservoir_reaches_the_target_spectral_radius(units, sparse, exact_max, monkeypatch):
    # exact_max=100 sends the 250-unit reservoir down the Arnoldi path used above 512 units
    monkeypatch.setattr(matrices, "EXACT_EIGVALS_MAX", exact_max)
    res = Reservoir(1, units, spectral_radius=1.25, connectivity=0.05, sparse=sparse, seed=2)
    w = res.weight_hh.to_dense() if sparse else res.weight_hh
    achieved = float(torch.linalg.eigvals(w).abs().max())
    assert achieved == pytest.approx(1.25, rel=1e-9 if units <= exact_max else 1e-3)


def test_errors():
    with pytest.raises(ValueError, match="connectivity must be in"):
        random_matrix(3, 3, connectivity=0.0)
    with pytest.raises(ValueError, match="distribution must be one of"):
        random_matrix(3, 3, distribution="cauchy")
    with pytest.raises(ValueError, match="expected a square matrix"):
        spectral_radius(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        spectral_radius(torch.eye(2), method="power")
    with pytest.raises(TypeError, match="seed must be an int"):
        random_stream("0", "w")
