r"""Linear readouts trained in closed form (ridge regression from accumulated sums) or online
(recursive least squares, FORCE)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from carousel._checks import check_positive_int, shape_str
from carousel.esn import _kernel

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["RLSReadout", "RidgeReadout"]


def _check_features(owner: str, name: str, x: Tensor, size: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != size:
        raise ValueError(
            f"{owner}: expected {name} of shape (N, {size}), got {shape_str(tuple(x.shape))}"
        )


#: Features per block of the symmetric product :func:`_add_gram_` and of its mirroring.
_GRAM_BLOCK = 256
#: Rows of S_xx per product of :func:`_add_gram_` (measured best near 128 at 1000 features).
_GRAM_ROWS = 128
#: From this many multiply-adds (rows x features^2) and features :func:`_add_gram_` uses the
#: compiled kernel where it can run. Below 2^17 multiply-adds its few microseconds of call
#: overhead outweigh the gain; below 64 features the gain is a few microseconds a chunk, and
#: torch's sums keep small fits exactly as they were (a near-singular S_xx, e.g. a 40-unit
#: reservoir on a sine, turns the last-bit differences of another summation order into
#: relative differences of 1e-6 in the weights).
_GRAM_KERNEL_WORK = 2**17
_GRAM_KERNEL_FEATURES = 64


def _gram_blocks(F: int, size: int = _GRAM_BLOCK) -> list[slice]:
    k = max(1, math.ceil(F / size))
    size = math.ceil(F / k)
    return [slice(i, min(i + size, F)) for i in range(0, F, size)]


def _add_gram_(xx: Tensor, x: Tensor) -> None:
    r"""``xx += x^T x`` on and below the diagonal (:math:`S_{xx}` is symmetric): one product
    per band of about :data:`_GRAM_ROWS` rows, from the first column to the band's diagonal
    block, so a bit over half the products of one ``addmm`` (9/16 at 1000 features) in
    products large enough to run near the BLAS's peak (1.28x faster than 256-feature blocks
    at 1000 features, float64, one thread). What lies above the diagonal is left undefined
    until :func:`_mirror_gram_`. Small products (few rows or features) take one ``addmm``,
    which is consistent with that.

    float64 sums on the CPU of at least :data:`_GRAM_KERNEL_FEATURES` features go to the
    compiled AVX-512 kernel (:func:`carousel.esn._kernel.gram`, on ``torch.get_num_threads()``
    threads) where it is built: MKL and OpenBLAS run float64 products at the AVX2 rate on AMD
    Zen 5, half the core's AVX-512 peak. For a 1,024-row chunk it takes 11.6 ms against
    21.9 ms for the torch bands at 1,002 features, 0.28 s against 0.58 s at 5,002, and
    6.2 / 139 ms against 11.6 / 318 ms on two threads (AMD EPYC Zen 5, 2-core VM shared with
    other jobs, wall-clock best of 8; ``.venv/bin/python tests/esn/test_gram.py --features
    1002 5002``). Its sums agree with torch's to float64 rounding, in another order. float32
    sums and other devices stay on torch (:func:`_add_gram_torch`).
    """
    F = x.shape[1]
    big = F >= _GRAM_KERNEL_FEATURES and x.shape[0] * F * F >= _GRAM_KERNEL_WORK
    if big and _kernel.gram(xx, x, torch.get_num_threads()):
        return
    _add_gram_torch(xx, x)


def _add_gram_torch(xx: Tensor, x: Tensor) -> None:
    """:func:`_add_gram_` in torch products (the bands; one ``addmm`` when small)."""
    F = x.shape[1]
    if F < 2 * _GRAM_BLOCK or x.shape[0] < _GRAM_BLOCK:
        xx.addmm_(x.T, x)
        return
    for band in _gram_blocks(F, _GRAM_ROWS):
        xx[band, : band.stop].addmm_(x[:, band].T, x[:, : band.stop])


#: From this many features the ridge solve factorises blockwise (:func:`cholesky_lower_`).
_BLOCKED_CHOLESKY_FEATURES = 256


def cholesky_lower_(a: Tensor) -> Tensor | None:
    """The Cholesky factor ``L`` (``a = L L^T``) of a float64 matrix, written over ``a``'s
    lower triangle, from that triangle alone (what lies above the diagonal is not read and is
    left undefined; ``torch.cholesky_solve`` does not read it); ``None`` if ``a`` is not
    numerically positive definite (``a`` then partly overwritten).

    Right-looking and blocked: each block column is factorised by LAPACK (``a[j:e, j:e]``),
    its rows below by a triangular solve, and the trailing lower triangle updated by the Gram
    kernel (``a[e:, e:] -= L21 L21^T``, :func:`carousel.esn._kernel.gram` with ``subtract``),
    which runs float64 products at twice the rate of the BLAS here (see :func:`_add_gram_`).
    Measured at 1,000 / 5,000 features, one thread, AMD Zen 5: 6.7-6.9 / 626-780 ms against
    10.9 / 1055 ms for ``torch.linalg.cholesky_ex``, with the same accuracy (relative
    difference of the factors 3e-16 / 5e-15). Where the kernel cannot run, or below
    :data:`_BLOCKED_CHOLESKY_FEATURES` features, LAPACK factorises the whole matrix.
    """
    n = a.shape[0]
    blocked = a.dtype == torch.float64 and a.device.type == "cpu" and a.stride(1) == 1
    if n < _BLOCKED_CHOLESKY_FEATURES or not blocked or not _kernel.gram_available():
        factor, info = torch.linalg.cholesky_ex(a)
        return factor if int(info) == 0 else None
    nb = min(256, max(96, n // 16))
    threads = torch.get_num_threads()
    for j in range(0, n, nb):
        e = min(j + nb, n)
        l11, info = torch.linalg.cholesky_ex(a[j:e, j:e])
        if int(info) != 0:
            return None
        a[j:e, j:e].copy_(l11)
        if e < n:
            l21 = torch.linalg.solve_triangular(l11, a[e:, j:e].T, upper=False).T
            a[e:, j:e].copy_(l21)
            if not _kernel.gram(a[e:, e:], l21.T.contiguous(), threads, subtract=True):
                a[e:, e:].addmm_(l21, l21.T, alpha=-1.0)
    return a


def _mirror_gram_(xx: Tensor) -> None:
    """Copy what lies below the diagonal of ``xx`` onto what lies above it (in place, block by
    block, no ``F x F`` temporary), so it holds the full symmetric :math:`S_{xx}`."""
    blocks = _gram_blocks(xx.shape[0])
    for i, ri in enumerate(blocks):
        d = xx[ri, ri]
        d.copy_(d.tril() + d.tril(-1).T)
        for rj in blocks[:i]:
            xx[rj, ri].copy_(xx[ri, rj].T)


class RidgeReadout(nn.Module):
    r"""A linear readout :math:`y = W x + b` fitted by ridge regression in closed form.

    Training data arrives in any number of chunks through :meth:`accumulate`, which only adds
    to the sufficient statistics (in ``accumulate_dtype``, float64 by default)

    .. math::

        S_{xx} = \sum_n x_n x_n^\top, \quad S_{xy} = \sum_n x_n y_n^\top, \quad
        s_x = \sum_n x_n, \quad s_y = \sum_n y_n, \quad N,

    so sequences far longer than memory stream through, and the sums of several processes
    add up (:meth:`all_reduce`). :math:`S_{xx}` is symmetric, so for large chunks only its
    blocks on and below the diagonal are accumulated (a bit over half the products of the
    fit's largest cost) and the rest is mirrored before a solve. :meth:`solve` then centres
    the sums and solves (Tikhonov 1963; Lukoševičius 2012, "A practical guide to applying echo
    state networks", eq. 9)

    .. math::

        (C_{xx} + \lambda I)\, W^\top = C_{xy}, \qquad b = \bar y - W \bar x,

    with :math:`C_{xx} = S_{xx} - N \bar x \bar x^\top`, :math:`C_{xy} = S_{xy} - N \bar x
    \bar y^\top`: the bias is fitted but not penalised (the same solution as reservoirpy's
    ``Ridge``). The system is solved by Cholesky factorisation, falling back to an LU solve
    if it is not numerically positive definite.

    Args:
        in_features: ``F``.
        out_features: ``O``.
        ridge: :math:`\lambda \ge 0`.
        accumulate_dtype: dtype of the sums and of the solve.
        device, dtype: of ``weight`` and ``bias``.

    Shape:
        - features: ``(N, F)``; targets ``(N, O)``; output ``(N, O)`` (any leading dims in
          :meth:`forward`).
    """

    # buffers registered in __init__: the fitted weights and the accumulated sums
    weight: Tensor
    bias: Tensor
    xx: Tensor
    xy: Tensor
    x_sum: Tensor
    y_sum: Tensor
    count: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        ridge: float = 1e-6,
        accumulate_dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("RidgeReadout", "in_features", in_features)
        self.out_features = check_positive_int("RidgeReadout", "out_features", out_features)
        self.ridge = _check_ridge("RidgeReadout", ridge)
        self.accumulate_dtype = accumulate_dtype
        F, O = in_features, out_features
        dtype = torch.float64 if dtype is None else dtype
        self.register_buffer("weight", torch.zeros(O, F, device=device, dtype=dtype))
        self.register_buffer("bias", torch.zeros(O, device=device, dtype=dtype))
        sums = {"xx": (F, F), "xy": (F, O), "x_sum": (F,), "y_sum": (O,), "count": ()}
        for name, shape in sums.items():
            zeros = torch.zeros(shape, device=device, dtype=accumulate_dtype)
            self.register_buffer(name, zeros, persistent=False)

    def reset(self) -> None:
        """Zero the accumulated sums."""
        for t in (self.xx, self.xy, self.x_sum, self.y_sum, self.count):
            t.zero_()

    @torch.no_grad()
    def accumulate(self, features: Tensor, targets: Tensor) -> None:
        """Add ``features (N, F)`` and ``targets (N, O)`` to the sums."""
        _check_features("RidgeReadout", "features", features, self.in_features)
        _check_features("RidgeReadout", "targets", targets, self.out_features)
        if features.shape[0] != targets.shape[0]:
            raise ValueError(
                f"RidgeReadout: features and targets must have the same number of rows, got "
                f"{features.shape[0]} and {targets.shape[0]}"
            )
        x = features.to(self.accumulate_dtype)
        y = targets.to(self.accumulate_dtype)
        # a column's sum is NaN or inf where the column holds one: the sums the readout needs
        # anyway test every element, without a pass of their own (the exact test runs only
        # when a sum is not finite, which finite values can also cause by overflowing)
        x_sum, y_sum = x.sum(0), y.sum(0)
        if not (bool(torch.isfinite(x_sum).all()) and bool(torch.isfinite(y_sum).all())) and not (
            bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())
        ):
            raise ValueError("RidgeReadout: features or targets contain NaN or inf")
        _add_gram_(self.xx, x)
        self.xy.addmm_(x.T, y)
        self.x_sum.add_(x_sum)
        self.y_sum.add_(y_sum)
        self.count.add_(x.shape[0])

    def all_reduce(self, group: ProcessGroup | None = None) -> None:
        """Sum the accumulated statistics over all processes of ``group`` with
        ``torch.distributed.all_reduce``, so :meth:`solve` fits one readout on the data of all
        processes (the sums are additive)."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "RidgeReadout.all_reduce: torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first"
            )
        # S_xx's blocks on and below the diagonal add up; solve() mirrors them, so what each
        # process holds above the diagonal does not matter
        for t in (self.xx, self.xy, self.x_sum, self.y_sum, self.count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    @torch.no_grad()
    def solve(self, ridge: float | None = None) -> None:
        """Solve for ``weight`` and ``bias`` from the sums (see the class docstring).

        Args:
            ridge: overrides the ridge parameter for this solve (the sums are kept, so several
                values can be tried on one pass over the data).

        Raises:
            ValueError: if nothing was accumulated.
        """
        lam = self.ridge if ridge is None else _check_ridge("RidgeReadout", ridge)
        n = float(self.count)
        if n < 1:
            raise ValueError("RidgeReadout: no data accumulated; call accumulate() first")
        x_mean = self.x_sum / n
        y_mean = self.y_sum / n
        _mirror_gram_(self.xx)

        def centred() -> Tensor:
            a = torch.addr(self.xx, x_mean, x_mean, alpha=-n)  # (F, F), no outer temporary
            a.diagonal().add_(lam)
            return a

        rhs = torch.addr(self.xy, x_mean, y_mean, alpha=-n)  # (F, O)
        factor = cholesky_lower_(centred())
        if factor is not None:
            w = torch.cholesky_solve(rhs, factor)  # reads the lower triangle only
        else:  # not numerically positive definite
            a = centred()
            if lam == 0:
                # minimum-norm least squares through the SVD: LAPACK's default gelsy took a
                # duplicated feature for full rank and returned weights of 1e12 that cancel
                # badly (training error 4.4 against 2e-14; tests/esn/test_gram.py)
                driver = "gelsd" if a.device.type == "cpu" else None
                w = torch.linalg.lstsq(a, rhs, driver=driver).solution
            else:
                w = torch.linalg.solve(a, rhs)
        del factor
        self.weight.copy_(w.T)
        self.bias.copy_(y_mean - x_mean @ w)

    def forward(self, features: Tensor) -> Tensor:
        """``features (..., F) -> (..., O)``."""
        return torch.nn.functional.linear(features, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, ridge={self.ridge}"


def _check_ridge(owner: str, ridge: object) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)):
        raise TypeError(f"{owner}: ridge must be a float, got {type(ridge).__name__}")
    if not math.isfinite(float(ridge)) or float(ridge) < 0:
        raise ValueError(f"{owner}: ridge must be a finite float >= 0, got {ridge}")
    return float(ridge)


class RLSReadout(nn.Module):
    r"""A linear readout trained online by recursive least squares (RLS; Haykin 2002,
    "Adaptive filter theory", ch. 9), the rule of FORCE learning (Sussillo & Abbott 2009,
    Neuron 63, eqs. 4-5).

    With the augmented feature :math:`z = [x; 1]` (so the bias is learned too), each update

    .. math::

        k = \frac{P z}{\mu + z^\top P z}, \quad
        e = W z - y, \quad W \leftarrow W - e\, k^\top, \quad
        P \leftarrow \frac{1}{\mu}\big(P - k\, z^\top P\big)

    with forgetting factor :math:`\mu \in (0, 1]` and :math:`P_0 = I / \alpha`. With
    :math:`\mu = 1`, after :math:`N` updates :math:`W` is exactly the ridge solution
    :math:`\arg\min \sum_n \lVert W z_n - y_n\rVert^2 + \alpha \lVert W \rVert^2` (bias
    penalised too), which the tests check.

    Args:
        in_features: ``F``.
        out_features: ``O``.
        alpha: :math:`\alpha > 0` (FORCE's :math:`\alpha`; larger is slower, more regularised).
        forgetting: :math:`\mu`.
        device, dtype: of the buffers (float64 by default; RLS is sensitive to rounding).
    """

    # buffers registered in __init__: [W, b] and P
    weight_aug: Tensor
    precision: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        alpha: float = 1.0,
        forgetting: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("RLSReadout", "in_features", in_features)
        self.out_features = check_positive_int("RLSReadout", "out_features", out_features)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"RLSReadout: alpha must be a float > 0, got {alpha!r}")
        if (
            isinstance(forgetting, bool)
            or not isinstance(forgetting, (int, float))
            or not 0 < forgetting <= 1
        ):
            raise ValueError(f"RLSReadout: forgetting must be in (0, 1], got {forgetting!r}")
        self.alpha = float(alpha)
        self.forgetting = float(forgetting)
        dtype = torch.float64 if dtype is None else dtype
        F1 = in_features + 1
        self.register_buffer(
            "weight_aug", torch.zeros(out_features, F1, device=device, dtype=dtype)
        )
        self.register_buffer("precision", torch.eye(F1, device=device, dtype=dtype) / self.alpha)

    @property
    def weight(self) -> Tensor:
        return self.weight_aug[:, :-1]

    @property
    def bias(self) -> Tensor:
        return self.weight_aug[:, -1]

    def reset(self) -> None:
        """Back to ``W = 0``, ``P = I / alpha``."""
        self.weight_aug.zero_()
        self.precision.copy_(
            torch.eye(self.in_features + 1, dtype=self.precision.dtype) / self.alpha
        )

    def forward(self, features: Tensor) -> Tensor:
        """``features (..., F) -> (..., O)``."""
        return torch.nn.functional.linear(features, self.weight, self.bias)

    @torch.no_grad()
    def update(self, features: Tensor, target: Tensor) -> Tensor:
        """One RLS update per row of ``features (B, F)`` / ``target (B, O)`` (rows in order).

        Returns:
            The outputs before the update (a-priori predictions), ``(B, O)``.
        """
        _check_features("RLSReadout", "features", features, self.in_features)
        _check_features("RLSReadout", "target", target, self.out_features)
        ones = torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)
        z_all = torch.cat([features, ones], 1).to(self.precision.dtype)
        y_all = target.to(self.precision.dtype)
        outs = []
        mu = self.forgetting
        P, W = self.precision, self.weight_aug
        for z, y in zip(z_all.unbind(0), y_all.unbind(0)):
            pz = P @ z  # (F+1,)
            k = pz / (mu + z @ pz)
            out = W @ z  # (O,)
            outs.append(out)
            W.sub_(torch.outer(out - y, k))
            P.sub_(torch.outer(k, pz)).div_(mu)  # P symmetric: z^T P = (P z)^T
        return torch.stack(outs)
