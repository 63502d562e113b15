r"""Random reservoir matrices, named random streams and spectral radii.

- :func:`random_stream`: a ``torch.Generator`` for a named stream of a seed, so each weight
  matrix of a reservoir has its own stream: changing the connectivity of the recurrent matrix
  leaves the input weights as they were, and the same seed gives the same reservoir.
- :func:`random_matrix`: a dense or sparse random matrix with a given connectivity.
- :func:`spectral_radius`: exact (all eigenvalues, :func:`torch.linalg.eigvals`) for small
  matrices, an implicitly restarted Arnoldi estimate for large dense or sparse ones.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from carousel._checks import check_choice, check_positive_int

__all__ = [
    "EXACT_EIGVALS_MAX",
    "SMALL_CHUNK_WORK",
    "SMALL_STEP_WORK",
    "arnoldi_spectral_radius",
    "random_matrix",
    "random_stream",
    "small_step_threads",
    "spectral_radius",
    "to_sparse_csr",
]

#: Largest size for which ``spectral_radius(method="auto")`` computes all eigenvalues.
EXACT_EIGVALS_MAX = 512


#: Multiply-adds per time step below which sequential loops run on one torch thread.
SMALL_STEP_WORK = 2**20


#: Multiply-adds of a whole chunk of work (e.g. one chunk's ridge sums) below which all of
#: it runs on one torch thread.
SMALL_CHUNK_WORK = 2**26


@contextmanager
def small_step_threads(work: int, limit: int | None = None) -> Iterator[None]:
    """Run a loop of many small sequential steps on one torch thread when each step does less
    than :data:`SMALL_STEP_WORK` multiply-adds, then restore the thread count.

    Each step of a reservoir (or Arnoldi) loop is a few microseconds of work; splitting it over
    threads gains nothing, and on a machine whose cores are busy with other processes the
    threads' synchronisation at every step costs far more than the step (measured on a 2-core
    machine under load: a 1000-unit fit took 57 s with 2 threads and 4.6 s with 1). The thread
    count is process-wide, so torch code running concurrently in other Python threads also sees
    one thread while the loop runs. ``limit`` replaces :data:`SMALL_STEP_WORK` (e.g.
    :data:`SMALL_CHUNK_WORK` for a whole small training call).
    """
    threads = torch.get_num_threads()
    if work >= (SMALL_STEP_WORK if limit is None else limit) or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_stream(seed: int, name: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for the stream ``name`` of ``seed``.

    The stream's seed is a hash of ``(seed, name)``, so streams are independent of one another
    and of the order in which they are drawn.

    Example:
        >>> a = torch.rand(2, generator=random_stream(0, "input"))
        >>> b = torch.rand(2, generator=random_stream(0, "input"))
        >>> torch.equal(a, b)
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"random_stream: seed must be an int, got {type(seed).__name__}")
    digest = hashlib.sha256(f"carousel.esn:{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def to_sparse_csr(matrix: Tensor) -> Tensor:
    """A dense matrix as a CSR tensor with int32 indices (faster products than int64 on CPU)."""
    with warnings.catch_warnings():
        # torch marks sparse CSR as beta; the operations used here are stable.
        warnings.simplefilter("ignore", UserWarning)
        csr = matrix.to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            csr.shape,
        )


_BLOCK_ROWS = 256  # rows drawn per block: fixes the random sequence, bounds the memory


def random_matrix(
    rows: int,
    cols: int,
    *,
    connectivity: float = 1.0,
    distribution: str = "normal",
    sparse: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A ``(rows, cols)`` matrix whose entries are nonzero with probability ``connectivity``.

    Each entry is kept independently (Bernoulli mask), as in Jaeger 2001 and reservoirpy; the
    nonzero values are drawn from ``distribution``: ``"normal"`` (N(0, 1)), ``"uniform"``
    (U(-1, 1)) or ``"bernoulli"`` (+-1 with equal probability). The matrix is drawn in blocks of
    256 rows, so a large sparse matrix never exists densely in memory, and the dense and sparse
    versions of the same stream are the same matrix.

    Args:
        rows, cols: shape.
        connectivity: fraction of nonzero entries, in ``(0, 1]``.
        distribution: see above.
        sparse: return a CSR tensor (int32 indices) instead of a dense one.
        generator: the random stream (CPU).
        dtype: dtype of the result (drawn in float64, then cast, so float32 and float64
            matrices of the same stream agree to rounding).

    Returns:
        A CPU tensor ``(rows, cols)``, dense or CSR.
    """
    owner = "random_matrix"
    check_positive_int(owner, "rows", rows)
    check_positive_int(owner, "cols", cols)
    check_choice(owner, "distribution", distribution, ("normal", "uniform", "bernoulli"))
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, float)):
        raise TypeError(f"{owner}: connectivity must be a float, got {type(connectivity).__name__}")
    if not 0.0 < connectivity <= 1.0:
        raise ValueError(f"{owner}: connectivity must be in (0, 1], got {connectivity}")
    f64 = torch.float64
    dense = None if sparse else torch.empty(rows, cols, dtype=dtype)
    counts, cols_idx, vals = [], [], []
    for start in range(0, rows, _BLOCK_ROWS):
        n = min(_BLOCK_ROWS, rows - start)
        if distribution == "normal":
            block = torch.randn(n, cols, generator=generator, dtype=f64)
        elif distribution == "uniform":
            block = torch.rand(n, cols, generator=generator, dtype=f64).mul_(2).sub_(1)
        else:
            block = torch.randint(0, 2, (n, cols), generator=generator).to(f64).mul_(2).sub_(1)
        if connectivity < 1.0:
            block.mul_(torch.rand(n, cols, generator=generator, dtype=f64) < connectivity)
        block = block.to(dtype)
        if dense is not None:
            dense[start : start + n] = block
        else:
            nz = block.nonzero()
            counts.append(torch.bincount(nz[:, 0], minlength=n))
            cols_idx.append(nz[:, 1].to(torch.int32))
            vals.append(block[nz[:, 0], nz[:, 1]])
    if dense is not None:
        return dense
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cat(counts).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            crow.to(torch.int32), torch.cat(cols_idx), torch.cat(vals), (rows, cols)
        )


def _matvec(matrix: Tensor) -> Callable[[Tensor], Tensor]:
    if matrix.layout == torch.sparse_csr:
        return lambda v: matrix @ v
    return lambda v: torch.mv(matrix, v)


def arnoldi_spectral_radius(
    matrix: Tensor,
    *,
    krylov_size: int = 60,
    restarts: int = 30,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> float:
    """Estimate the spectral radius of a large (dense or CSR) matrix by restarted Arnoldi.

    Arnoldi iteration (Saad 2011, "Numerical methods for large eigenvalue problems",
    algorithm 6.1) builds an orthonormal Krylov basis with ``krylov_size`` products with the
    matrix; the eigenvalues of the small Hessenberg matrix (Ritz values) approximate the
    outermost eigenvalues. The iteration restarts from the real and imaginary parts of the
    Ritz vector of the largest Ritz value (explicit restart, Saad section 7.2) until that
    value's modulus changes by less than ``tol`` (relative). Costs ``krylov_size * restarts``
    matrix-vector products at most, ``O(nnz)`` each; works on any device.

    Args:
        matrix: square ``(H, H)`` dense or sparse CSR tensor.
        krylov_size: Krylov subspace dimension per restart.
        restarts: maximum number of restarts.
        tol: relative convergence tolerance on the modulus.
        generator: random start vector (CPU stream).

    Returns:
        The estimated largest absolute eigenvalue.
    """
    nnz = matrix.values().numel() if matrix.layout == torch.sparse_csr else matrix.numel()
    with small_step_threads(nnz):
        return _arnoldi(matrix, krylov_size, restarts, tol, generator)


def _arnoldi(
    matrix: Tensor,
    krylov_size: int,
    restarts: int,
    tol: float,
    generator: torch.Generator | None,
) -> float:
    n = matrix.shape[0]
    m = min(krylov_size, n)
    mv = _matvec(matrix)
    dtype = matrix.dtype if matrix.dtype in (torch.float32, torch.float64) else torch.float64
    start = torch.randn(n, generator=generator, dtype=torch.float64).to(matrix.device, dtype)
    previous = math.nan
    estimate = 0.0
    for _ in range(max(1, restarts)):
        basis = torch.zeros(m + 1, n, dtype=dtype, device=matrix.device)
        hess = torch.zeros(m + 1, m, dtype=torch.float64)
        basis[0] = start / start.norm()
        steps = m
        for j in range(m):
            w = mv(basis[j])
            # Modified Gram-Schmidt, twice for stability (DGKS re-orthogonalisation).
            coeff = basis[: j + 1] @ w
            w = w - coeff @ basis[: j + 1]
            coeff2 = basis[: j + 1] @ w
            w = w - coeff2 @ basis[: j + 1]
            hess[: j + 1, j] = (coeff + coeff2).double().cpu()
            norm = float(w.norm())
            hess[j + 1, j] = norm
            if norm < 1e-12:  # invariant subspace: the Ritz values are exact
                steps = j + 1
                break
            basis[j + 1] = w / norm
        eigvals, eigvecs = torch.linalg.eig(hess[:steps, :steps])
        k = int(eigvals.abs().argmax())
        estimate = float(eigvals[k].abs())
        if steps < m or abs(estimate - previous) <= tol * max(estimate, 1e-300):
            break
        previous = estimate
        ritz = eigvecs[:, k].to(torch.complex128)
        vec = ritz.real.to(dtype).to(matrix.device) @ basis[:steps]
        vec_im = ritz.imag.to(dtype).to(matrix.device) @ basis[:steps]
        start = vec + vec_im if float(vec_im.norm()) > 0 else vec
        if float(start.norm()) == 0.0:
            start = vec
    return estimate


def spectral_radius(
    matrix: Tensor, *, method: str = "auto", generator: torch.Generator | None = None
) -> float:
    """The spectral radius (largest absolute eigenvalue) of a square dense or CSR matrix.

    Args:
        matrix: ``(H, H)``.
        method: ``"exact"`` (all eigenvalues in float64 with :func:`torch.linalg.eigvals`,
            ``O(H^3)``), ``"arnoldi"`` (:func:`arnoldi_spectral_radius`, about 1e-6 relative
            accuracy on random reservoirs), or ``"auto"``: exact up to
            :data:`EXACT_EIGVALS_MAX` units, Arnoldi above.
        generator: start vector of the Arnoldi iteration.

    Returns:
        The spectral radius as a float.

    Raises:
        ValueError: if ``matrix`` is not square or ``method`` is unknown.
    """
    check_choice("spectral_radius", "method", method, ("auto", "exact", "arnoldi"))
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"spectral_radius: expected a square matrix, got shape {tuple(matrix.shape)}"
        )
    if method == "auto":
        method = "exact" if matrix.shape[0] <= EXACT_EIGVALS_MAX else "arnoldi"
    if method == "exact":
        dense = matrix.to_dense() if matrix.layout == torch.sparse_csr else matrix
        # One thread: for these sizes the multithreaded eigensolver is no faster, and on a busy
        # machine its OpenMP threads can make it 100x slower (measured: 150 units, 14 s vs 0.07 s).
        with small_step_threads(0):
            return float(torch.linalg.eigvals(dense.detach().cpu().double()).abs().max())
    return arnoldi_spectral_radius(matrix, generator=generator)
