r"""Dynamics of the recurrence: the Jacobians :math:`J_t = \partial s_t/\partial s_{t-1}` along a
sequence, their singular values, and the Lyapunov exponents of their product.

``s_t`` is a layer's whole state (``h`` for RNN/GRU, ``(h, c)`` concatenated for LSTM), and
:math:`J_t` is taken at the recorded trajectory with the layer's recorded input held fixed.
Backpropagation through time multiplies errors by :math:`J_t^\top` once per step, so the largest
singular value :math:`\sigma_1(J_t)` bounds how much one step can amplify an error (Pascanu et al.
2013, eq. 6-7: if it stays below 1 gradients vanish), and the largest Lyapunov exponent

.. math::

    \lambda_1 = \lim_{T\to\infty} \frac{1}{T} \log \big\| J_T J_{T-1} \cdots J_1 v \big\|

(Oseledets 1968) is the average exponential rate at which perturbations (and errors travelling
back) grow: :math:`\lambda_1 < 0` is ordered, contracting dynamics in which gradients vanish
exponentially; :math:`\lambda_1 > 0` is chaos in which they explode; the edge of chaos
:math:`\lambda_1 \approx 0` keeps them (Bertschinger & Natschläger 2004; Sompolinsky et al. 1988
for random tanh networks, chaotic for gain above 1).

The exponents are estimated by the QR method (Benettin et al. 1980; Eckmann & Ruelle 1985, Sec.
III.A; Dieci et al. 1997): carry ``k`` orthonormal vectors through the product, re-orthonormalise
them with a QR decomposition after every step and average ``log |R_ii|``. Here the vectors travel
backwards, through :math:`J_t^\top`, in one reverse-mode pass whose per-step hooks do the QR;
the singular values of a product and of its transpose are the same, so are the exponents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from carousel.analysis.record import LayerRecord, Recording, record

__all__ = [
    "JacobianSpectrum",
    "LyapunovExponents",
    "jacobian_spectrum",
    "lyapunov_exponents",
    "regime",
]


def _check_recording(
    owner: str,
    model: nn.Module | None,
    inputs: Any,
    recording: Recording | None,
    kwargs: dict | None,
) -> Recording:
    if recording is not None:
        if not isinstance(recording, Recording):
            raise TypeError(
                f"{owner}: recording must be a Recording from carousel.analysis.record, got "
                f"{type(recording).__name__}"
            )
        return recording
    if model is None or inputs is None:
        raise ValueError(f"{owner}: give model and inputs, or a recording")
    return record(model, inputs, forward_kwargs=kwargs, grad=False)


def _sequences(owner: str, lay: LayerRecord, batch_index: int | None) -> list[int]:
    B = lay.inputs.shape[1]
    if batch_index is None:
        return list(range(B))
    if isinstance(batch_index, bool) or not isinstance(batch_index, int):
        raise TypeError(f"{owner}: batch_index must be an int or None, got {batch_index!r}")
    if not -B <= batch_index < B:
        raise ValueError(f"{owner}: batch_index must be in [0, {B}) for B={B}, got {batch_index}")
    return [batch_index % B]


def _flat_step(lay: LayerRecord) -> Callable[[Tensor, Tensor], Tensor]:
    """``F(x (N, I), z (N, S)) -> (N, S)``: one step of the cell on flat states."""

    def F(x: Tensor, z: Tensor) -> Tensor:
        _, new, _ = lay.step(x, lay.make_state(z))
        return lay.flat_state(new)

    return F


def _reorder(lay: LayerRecord, z: Tensor, seqs: list[int]) -> Tensor:
    """Processing order <-> time order (an involution) for the chosen sequences."""
    if lay.order is None:
        return z
    order = lay.order[:, seqs]
    idx = order.view(*order.shape, *([1] * (z.dim() - 2))).expand_as(z)
    return z.gather(0, idx)


def _processing(lay: LayerRecord, seqs: list[int]) -> tuple[Tensor, Tensor, Tensor | None]:
    """Inputs ``(T, B', I)``, previous states ``(T, B', S)`` and mask ``(T, B')`` in the order
    the cell processed them, for the chosen sequences."""
    x = lay.processing_order(lay.inputs)[:, seqs]
    z = lay.previous[:, seqs]
    m = None
    if lay.mask is not None:
        m = lay.processing_order(lay.mask.to(torch.long)).to(torch.bool)[:, seqs]
    return x, z, m


@dataclass
class JacobianSpectrum:
    r"""Singular values of :math:`J_t = \partial s_t/\partial s_{t-1}` along a sequence.

    Attributes:
        sigma_max: track -> ``(T, B')``: the largest singular value of each step's Jacobian
            (time order; ``t`` is the step that produced ``s_t``; NaN past a sequence's end).
            ``B' = 1`` for one ``batch_index``, else ``B``.
        spectra: track -> ``(n, S)``: every singular value, descending, of the Jacobians at
            ``steps[track]`` for sequence ``batch_index`` (``S`` = state size, ``2H`` for LSTM).
        steps: track -> ``(n,)`` the time steps of ``spectra``.
        batch_index: the sequence (``None``: all, for ``sigma_max``; ``spectra`` then use 0).
    """

    sigma_max: dict[str, Tensor]
    spectra: dict[str, Tensor]
    steps: dict[str, Tensor]
    batch_index: int | None


def _largest_singular_values(
    F: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    z: Tensor,
    iterations: int,
    generator: torch.Generator,
) -> Tensor:
    r""":math:`\sigma_1` of every row's Jacobian at once: the Lanczos method (Lanczos 1950; Golub
    & Van Loan, *Matrix Computations*, Sec. 10.1) on :math:`J^\top J`, with every step (row of
    ``z``) in one batch (rows do not interact).

    ``iterations`` Lanczos steps give the largest Ritz value of the tridiagonal matrix, a lower
    bound on :math:`\sigma_1^2` that converges far faster than power iteration when the top
    singular values cluster. No reorthogonalisation is needed for the extreme eigenvalue: the
    loss of orthogonality only adds copies of Ritz values that have converged (Paige 1980).

    Only reverse mode is used, on graphs built once: :math:`J^\top u` is a backward pass of
    ``F``, and :math:`J v` a backward pass of the graph of :math:`J^\top u` (linear in ``u``:
    the "double-backward trick"), so no forward pass is repeated per iteration.
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        out = F(x, z)
        u = torch.zeros_like(out, requires_grad=True)
        (jtu,) = torch.autograd.grad(out, z, u, create_graph=True, allow_unused=True)
        if jtu is None:  # the step ignores its previous state: J = 0
            return z.new_zeros(z.shape[0])

        def gram(v: Tensor) -> Tensor:  # J^T J v
            jv = torch.autograd.grad(jtu, u, v, retain_graph=True)[0]
            return torch.autograd.grad(out, z, jv, retain_graph=True)[0]

        N, S = z.shape
        m = min(iterations, S)
        tiny = torch.finfo(z.dtype).tiny
        q = torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z)
        q = q / q.norm(dim=-1, keepdim=True)
        q_prev = torch.zeros_like(q)
        alphas, betas = [], []
        b = z.new_zeros(N)
        for j in range(m):
            w = gram(q).detach()
            a = (w * q).sum(-1)
            alphas.append(a)
            if j == m - 1:
                break
            w = w - a.unsqueeze(-1) * q - b.unsqueeze(-1) * q_prev  # three-term recurrence
            b = w.norm(dim=-1)
            betas.append(b)
            # an invariant subspace (b = 0): continue with a zero vector, which adds zero rows
            q_prev, q = q, torch.where(b.unsqueeze(-1) > 0, w / b.clamp_min(tiny).unsqueeze(-1), 0)
    Tm = torch.diag_embed(torch.stack(alphas, -1))
    if betas:
        off = torch.diag_embed(torch.stack(betas, -1), offset=1)
        Tm = Tm + off + off.mT
    top = torch.linalg.eigvalsh(Tm.to(torch.float64))[:, -1]  # (N,)
    return top.clamp_min(0).sqrt().to(z.dtype)


def _jacobians(F: Callable[[Tensor, Tensor], Tensor], x: Tensor, z: Tensor) -> Tensor:
    """Explicit Jacobians ``(n, S, S)`` of ``F`` at ``n`` points: each point repeated ``S``
    times as rows of one batch, one backward pass with the identity as cotangent."""
    n, S = z.shape
    with torch.enable_grad():
        zr = z.detach().repeat_interleave(S, dim=0).requires_grad_()  # (n*S, S)
        out = F(x.repeat_interleave(S, dim=0), zr)  # (n*S, S)
        eye = torch.eye(S, dtype=out.dtype, device=out.device).repeat(n, 1)  # row i: e_(i%S)
        (g,) = torch.autograd.grad(out, zr, eye)
    return g.view(n, S, S)  # [p, i, :] = d out_i / d z at point p


def _select_steps(owner: str, spectrum_steps: int | Sequence[int], valid_len: int) -> list[int]:
    if isinstance(spectrum_steps, bool):
        raise TypeError(f"{owner}: spectrum_steps must be an int or a sequence of ints, got a bool")
    if isinstance(spectrum_steps, int):
        if spectrum_steps < 0:
            raise ValueError(f"{owner}: spectrum_steps must be >= 0, got {spectrum_steps}")
        if spectrum_steps == 0:
            return []
        n = min(spectrum_steps, valid_len)
        pts = torch.linspace(0, valid_len - 1, n).round().to(torch.long).unique()
        return pts.tolist()
    steps = [int(s) for s in spectrum_steps]
    for s in steps:
        if not -valid_len <= s < valid_len:
            raise ValueError(
                f"{owner}: spectrum_steps entries must lie in [0, {valid_len}), got {s}"
            )
    return [s % valid_len for s in steps]


def jacobian_spectrum(
    model: nn.Module | None = None,
    inputs: Any = None,
    *,
    batch_index: int | None = 0,
    iterations: int = 30,
    spectrum_steps: int | Sequence[int] = 3,
    seed: int = 0,
    forward_kwargs: dict | None = None,
    recording: Recording | None = None,
) -> JacobianSpectrum:
    r"""Singular values of the one-step Jacobians :math:`\partial s_t/\partial s_{t-1}` of every
    carousel layer and direction in ``model``, along the sequence.

    :math:`\sigma_1(J_t)` is computed at every step, all steps in one batch, by ``iterations``
    Lanczos steps on :math:`J_t^\top J_t` (two backward passes each, without forming
    :math:`J_t`). The full spectra are computed exactly (explicit
    Jacobian and SVD) at a few steps only, as an SVD costs :math:`O(S^3)` per step.

    Args:
        model, inputs: the model and its input (a tensor or a tuple of positional arguments);
            or pass ``recording`` instead.
        batch_index: the sequence to analyse, or ``None`` for ``sigma_max`` of all of them.
        iterations: Lanczos steps for ``sigma_max`` (at most ``S``; exact at ``S``).
        spectrum_steps: number of evenly spaced steps (first and last included) for the full
            spectra, or the list of steps; ``0`` skips them.
        seed: seed of the Lanczos start vectors.
        forward_kwargs: keyword arguments for the model's forward (e.g. ``lengths``).
        recording: a :func:`~carousel.analysis.record.record` of the model, to reuse.

    Returns:
        :class:`JacobianSpectrum`.

    Raises:
        ValueError: bad ``batch_index``, ``iterations`` or ``spectrum_steps``.
    """
    owner = "jacobian_spectrum"
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"{owner}: iterations must be a positive int, got {iterations!r}")
    rec = _check_recording(owner, model, inputs, recording, forward_kwargs)
    gen = torch.Generator().manual_seed(seed)
    sigma, spectra, steps_out = {}, {}, {}
    with torch.no_grad():
        for name, lay in rec.layers.items():
            seqs = _sequences(owner, lay, batch_index)
            x, z, m = _processing(lay, seqs)  # (T, B', *)
            T, Bs = x.shape[0], x.shape[1]
            F = _flat_step(lay)
            s = _largest_singular_values(
                F, x.reshape(T * Bs, -1), z.reshape(T * Bs, -1), iterations, gen
            )
            s = s.view(T, Bs)
            if m is not None:
                s = torch.where(m, s, torch.full_like(s, math.nan))
            sigma[name] = _reorder(lay, s, seqs)
            # full spectra for one sequence, at a few time steps
            b = seqs[0]
            valid = T if lay.mask is None else int(lay.mask[:, b].sum())
            chosen = _select_steps(owner, spectrum_steps, valid)
            steps_out[name] = torch.tensor(chosen, dtype=torch.long)
            if not chosen:
                spectra[name] = z.new_zeros(0, z.shape[-1])
                continue
            order = lay.order
            proc = [int(order[t, b]) if order is not None else t for t in chosen]
            xs = lay.processing_order(lay.inputs)[proc, b]  # (n, I)
            zs = lay.previous[proc, b]  # (n, S)

            spectra[name] = torch.linalg.svdvals(_jacobians(F, xs, zs))  # (n, S)
    return JacobianSpectrum(sigma_max=sigma, spectra=spectra, steps=steps_out,
                            batch_index=batch_index)  # fmt: skip


def regime(exponent: float, tolerance: float = 0.01) -> str:
    """Name the dynamics from the largest Lyapunov exponent (nats per step).

    Returns:
        ``"ordered"`` if ``exponent < -tolerance``, ``"chaotic"`` if ``exponent > tolerance``,
        else ``"edge of chaos"``.
    """
    if exponent < -tolerance:
        return "ordered"
    if exponent > tolerance:
        return "chaotic"
    return "edge of chaos"


@dataclass
class LyapunovExponents:
    """The ``k`` largest Lyapunov exponents of each track's recurrence, in nats per step.

    Attributes:
        exponents: track -> ``(B', k)``, descending per sequence (``B' = 1`` for one
            ``batch_index``).
        local: track -> ``(T, B', k)``: ``log |R_ii|`` of the QR step at each time step, the
            local growth rates whose average (after the transient) is the exponent; zero past a
            sequence's end.
        discard: steps of transient left out at the end of each sequence (where the backward
            pass starts).
    """

    exponents: dict[str, Tensor]
    local: dict[str, Tensor]
    discard: int

    def largest(self) -> float:
        """The largest exponent over tracks (mean over sequences): for a stack of layers the
        Jacobian of the whole state is block triangular, so this is the network's
        :math:`\\lambda_1`."""
        return max(float(e[:, 0].mean()) for e in self.exponents.values())

    def regime(self, tolerance: float = 0.01) -> str:
        """:func:`regime` of :meth:`largest`."""
        return regime(self.largest(), tolerance)


def _qr_hook(store: list, j: int, B: int, k: int) -> Callable[[Tensor], Tensor]:
    def hook(g: Tensor) -> Tensor:
        S = g.shape[-1]
        if k == 1:
            n = g.norm(dim=-1)  # (B,)
            store[j] = n.clamp_min(torch.finfo(g.dtype).tiny).log().unsqueeze(-1)
            return g / n.clamp_min(torch.finfo(g.dtype).tiny).unsqueeze(-1)
        q, r = torch.linalg.qr(g.view(B, k, S).transpose(1, 2))  # (B, S, k), (B, k, k)
        d = r.diagonal(dim1=-2, dim2=-1).abs()
        store[j] = d.clamp_min(torch.finfo(g.dtype).tiny).log()
        return q.transpose(1, 2).reshape(B * k, S)

    return hook


def lyapunov_exponents(
    model: nn.Module | None = None,
    inputs: Any = None,
    *,
    k: int = 1,
    discard: int | None = None,
    batch_index: int | None = None,
    seed: int = 0,
    forward_kwargs: dict | None = None,
    recording: Recording | None = None,
) -> LyapunovExponents:
    r"""The ``k`` largest Lyapunov exponents of every carousel layer's recurrence along the
    recorded trajectory, by the QR method (see the module docstring).

    Each layer is driven by its recorded input; the exponents are those of the product of its
    one-step Jacobians at the recorded states (conditional Lyapunov exponents of the driven
    system). Cost: one forward and one backward pass of each layer with ``B*k`` rows, plus a
    ``(S, k)`` QR per step.

    Args:
        model, inputs: the model and its input; or pass ``recording``.
        k: how many exponents (``1``: the largest only; up to the state size ``S``).
        discard: transient steps left out at the end of each sequence, where the backward pass
            starts and the vectors have not yet aligned (default ``min(T // 10, 100)``).
        batch_index: one sequence, or ``None`` (default) for every sequence.
        seed: seed of the random orthonormal start vectors.
        forward_kwargs: keyword arguments for the model's forward.
        recording: a :func:`~carousel.analysis.record.record` of the model, to reuse.

    Returns:
        :class:`LyapunovExponents`.

    Raises:
        ValueError: if ``k`` is not in ``[1, S]`` or nothing is left after ``discard``.

    Example:
        >>> import torch, carousel
        >>> from carousel.analysis import lyapunov_exponents
        >>> rnn = carousel.RNN(1, 16)
        >>> with torch.no_grad():
        ...     _ = rnn.weight_hh_l0.mul_(0.1)
        >>> lyapunov_exponents(rnn, torch.randn(200, 1, 1)).regime()
        'ordered'
    """
    owner = "lyapunov_exponents"
    rec = _check_recording(owner, model, inputs, recording, forward_kwargs)
    gen = torch.Generator().manual_seed(seed)
    exps, locs = {}, {}
    d_used = 0
    for name, lay in rec.layers.items():
        seqs = _sequences(owner, lay, batch_index)
        x, z, m = _processing(lay, seqs)
        T, Bs, S = z.shape
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= S:
            raise ValueError(f"{owner}: k must be an int in [1, S={S}] for track {name}, got {k}")
        d_used = min(T // 10, 100) if discard is None else int(discard)
        if d_used < 0:
            raise ValueError(f"{owner}: discard must be >= 0, got {discard}")
        F = _flat_step(lay)
        # k copies of each sequence: rows (b, i) -> b * k + i
        xr = x.repeat_interleave(k, dim=1)  # (T, B'k, I)
        zr = z.repeat_interleave(k, dim=1)  # (T, B'k, S)
        mr = None if m is None else m.repeat_interleave(k, dim=1)
        store: list[Tensor | None] = [None] * T
        with torch.enable_grad():
            link = zr[0].clone().requires_grad_()
            link.register_hook(_qr_hook(store, 0, Bs, k))
            prev = link
            for j in range(T):
                # value: the recorded state; derivative: flows back along the chain
                z_in = zr[j] + (prev - prev.detach())
                out = F(xr[j], z_in)  # (B'k, S)
                if mr is not None:
                    out = torch.where(mr[j].unsqueeze(-1), out, z_in)
                if j < T - 1:
                    out.register_hook(_qr_hook(store, j + 1, Bs, k))
                prev = out
            u0 = torch.randn(Bs, S, k, generator=gen, dtype=torch.float64)
            u0 = torch.linalg.qr(u0)[0].to(prev).transpose(1, 2).reshape(Bs * k, S)
            torch.autograd.grad(prev, link, u0)
        growth = torch.stack(
            [g if g is not None else z.new_zeros(Bs, k) for g in store]
        )  # (T, B', k) processing order
        lengths = torch.full((Bs,), T, dtype=torch.long) if m is None else m.sum(0).cpu()
        steps = torch.arange(T).unsqueeze(1)  # (T, 1)
        keep = steps < (lengths - d_used).unsqueeze(0)  # (T, B')
        if (keep.sum(0) == 0).any():
            raise ValueError(
                f"{owner}: discard={d_used} leaves no step of track {name} (lengths "
                f"{lengths.tolist()}); use a smaller discard or longer sequences"
            )
        if m is not None:
            growth = torch.where(m.unsqueeze(-1), growth, torch.zeros_like(growth))
        kf = keep.to(growth).unsqueeze(-1)
        exps[name] = ((growth * kf).sum(0) / kf.sum(0)).sort(dim=-1, descending=True).values
        locs[name] = _reorder(lay, growth, seqs).detach()
    return LyapunovExponents(exponents=exps, local=locs, discard=d_used)
