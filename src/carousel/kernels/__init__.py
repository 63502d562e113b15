r"""Compiled CPU kernels for the recurrent layers (the ``impl="compiled"`` path).

A C++ extension (``csrc/recurrent.cpp``) runs the time loop of the forward and the backward
pass through time: per step one matrix product into a preallocated buffer and one fused pass
of the gate arithmetic over the ``B x H`` units, instead of the several PyTorch operations per
step of the pure-PyTorch path :mod:`carousel.bptt`. The math, the mask convention and the
results are those of :mod:`carousel.bptt` (the oracle it is tested against,
tests/test_kernels.py; the equations are in the docstrings of :mod:`carousel.bptt.lstm`,
:mod:`~carousel.bptt.gru` and :mod:`~carousel.bptt.rnn`, after Werbos 1990). As there, the
input projections of all steps and every weight gradient, summed over time, are single matrix
products outside the loop.

Threads: with several torch threads (``torch.set_num_threads``) and a batch of at least 4 rows
a thread (and enough work), the batch is split into one block of contiguous rows per thread
and every block runs the whole time loop, forward and backward, with its own per-step products
on its rows: the rows of a batch do not interact, so the threads never wait for each other
within the loop (one ``at::parallel_for`` around it). Smaller batches (batch-1 generation)
keep one loop, whose products ATen threads. The products over all steps outside the loop use
every thread. In float32 the per-step products run on a register-tiled AVX-512 kernel
(where the compiler targets AVX-512 and the weight matrix has at most ``2**20`` elements),
the other products of at least ``2**21`` multiply-adds on oneDNN (ATen's ``mkldnn_matmul``,
where torch exports it and ``torch.backends.mkldnn.enabled``): both two to two and a half
times as fast as torch's BLAS call on CPUs where MKL takes a slow path (AMD's). Smaller
products, and float64, run on ATen's ``addmm``.

The extension is built on first use with :func:`torch.utils.cpp_extension.load` (needs a C++
compiler and ``ninja``: ``pip install carousel-rnn[compiled]``) and cached under
``$CAROUSEL_KERNEL_DIR`` or ``$XDG_CACHE_HOME/carousel/kernels`` (default
``~/.cache/carousel/kernels``), in a directory keyed by the torch version and a hash of the
source, the flags, the CPU and the torch installation, so it is built once per torch
installation (each virtual environment: torch's builder compiles against that
installation's headers, and rebuilds when their path changes); a message is logged (logger
``carousel.kernels``, level WARNING) while it builds. Where no compiler or ``ninja`` is
present, the build fails, or ``CAROUSEL_NO_COMPILE=1`` is set, :func:`available` is False and
``impl="compiled"`` runs the pure-PyTorch path :mod:`carousel.bptt` instead. Where torch's
threads are GNU OpenMP's (``libgomp``), the extension is built with ``-fopenmp`` and shares
that runtime (else ATen's header-only ``at::parallel_for`` runs serially in it: one thread a
kernel call, as where that build fails and it is built without).

Covered: the Elman RNN (tanh, ReLU), the GRU (both formulations) and the whole LSTM family:
torch.nn's cell with any combination of the switches peephole, NIG, NFG, NOG, NIAF, NOAF and
CIFG, with or without layer normalisation (Ba et al. 2016; the input projections of all
steps are one product, and both pre-activation layer norms, ``LN(W_ih x_t) gamma_ih`` and
``LN(W_hh h_{t-1}) gamma_hh``, and the cell's run per row in the loop), full gate recurrence
(Greff's FGR: a second per-step product ``W_gg s_{t-1}``) and a projection (``proj_size``,
Sak et al. 2014: per step one more product each way, ``h_t = W_hr m_t`` after the gate pass
and ``delta m_t = delta h_t W_hr`` before its backward, with ``m_t = o_t tanh(c_t)`` kept for
``W_hr``'s gradient, one product over all steps). Floating dtypes float32 and float64, on the
CPU (:func:`supports`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from carousel._platform import cpu_id
from carousel._recompute import Recompute, keep_for_recompute, twice_differentiable

if TYPE_CHECKING:
    from carousel.cells.lstm import LSTMCell
    from carousel.layers.sequence import SequenceResult

__all__ = ["available", "load", "run_sequence", "supports"]

_log = logging.getLogger("carousel.kernels")
_SOURCE = Path(__file__).with_name("csrc") / "recurrent.cpp"
_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "ok": False, "error": None}


#: Compiler flags: optimised for the building machine's CPU (the cache is keyed by it).
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno"]
#: Added where torch's intra-op threads are OpenMP's: ATen's ``at::parallel_for`` is a
#: header template that runs serially in code compiled without OpenMP. The extension then
#: shares torch's OpenMP runtime (same ``libgomp.so.1``), and its thread count.
_OPENMP_FLAGS = ["-fopenmp"]


def _openmp() -> bool:
    """Whether torch's CPU threads are GNU OpenMP's (``libgomp``, loaded in this process): the
    extension is then built with ``-fopenmp`` and shares that runtime. Not with another
    OpenMP runtime (LLVM's, Intel's), which would add a second thread pool."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return False


def _flags(openmp: bool) -> list[str]:
    return _CFLAGS + (_OPENMP_FLAGS if openmp else [])


def _disabled() -> bool:
    return os.environ.get("CAROUSEL_NO_COMPILE", "").strip() not in ("", "0")


def cache_dir(flags: list[str] | None = None) -> Path:
    """The directory the built extension is cached in (created on build).

    ``$CAROUSEL_KERNEL_DIR`` if set, else ``$XDG_CACHE_HOME/carousel/kernels`` (default
    ``~/.cache/carousel/kernels``), then a subdirectory keyed by the torch version and the
    hash of the source, the compiler flags, the CPU and the torch installation's directory.
    torch's builder writes that directory's header paths into its build file and rebuilds
    when they change, so two environments sharing one build directory would rebuild it, without
    a word, every time the other had used it (about 20 s each).

    Args:
        flags: the compiler flags of the build (default: those :func:`load` tries first).
    """
    if flags is None:
        flags = _flags(_openmp())
    root = os.environ.get("CAROUSEL_KERNEL_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(xdg) / "carousel" / "kernels"
    h = hashlib.sha256(_SOURCE.read_bytes())
    h.update(" ".join(flags).encode())
    h.update(cpu_id().encode())  # -march=native: one build per kind of CPU
    h.update(str(Path(torch.__file__).resolve().parent).encode())  # one per installation
    digest = h.hexdigest()[:12]
    tv = torch.__version__.replace("+", "_")
    return base / f"torch{tv}-{digest}"


#: A build lock older than this (seconds) is left by an interrupted build: removed.
_STALE_LOCK_S = 900.0


def _clear_stale_lock(build: Path) -> None:
    """torch's builder waits while a ``lock`` file exists in the build directory; one left by
    a killed build would make every later load wait forever."""
    import time

    lock = build / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
            _log.warning("carousel: removing a stale build lock %s", lock)
            lock.unlink()
    except OSError:
        pass


def _build(cpp_extension: ModuleType, flags: list[str]) -> None:
    """Build (unless cached) and load the extension with ``flags``; raises on failure."""
    build = cache_dir(flags)
    build.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build)
    if not any(build.glob("*.so")):
        _log.warning(
            "carousel: building the compiled recurrent kernels in %s (once per "
            "torch installation; takes up to a minute or two) ...",
            build,
        )
    cpp_extension.load(
        name="carousel_kernels",
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=[f for f in flags if f in _OPENMP_FLAGS],
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )


def load() -> bool:
    """Build (once, cached) and load the extension; True when it is usable.

    Never raises: without a compiler or ``ninja``, with ``CAROUSEL_NO_COMPILE=1`` or when the
    build fails it returns False (and logs why once), and ``impl="compiled"`` falls back to
    :mod:`carousel.bptt`.

    Returns:
        Whether the compiled kernels are loaded.
    """
    if _disabled():
        return False
    with _lock:
        if _state["tried"]:
            return _state["ok"]
        _state["tried"] = True
        try:
            from torch.utils import cpp_extension

            cpp_extension.verify_ninja_availability()
            if _openmp():
                try:
                    _build(cpp_extension, _flags(True))
                except Exception as err:  # a compiler without OpenMP: serial at::parallel_for
                    _log.warning(
                        "carousel: building the kernels with OpenMP failed (%s: %s); "
                        "building them without (one thread per kernel call)",
                        type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "",
                    )
                    _build(cpp_extension, _flags(False))
            else:
                _build(cpp_extension, _flags(False))
            _state["ok"] = hasattr(torch.ops.carousel_kernels, "lstm_forward")
        except Exception as err:  # no compiler, no ninja, a failed build: fall back
            _state["error"] = err
            _log.warning(
                "carousel: compiled kernels unavailable (%s: %s); impl='compiled' runs the "
                "pure-PyTorch 'bptt' path",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
        return _state["ok"]


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on first call; see :func:`load`).

    Returns:
        False with ``CAROUSEL_NO_COMPILE=1``, without a compiler or ``ninja``, or when the
        build failed; else True.
    """
    return load()


def supports(cell: Any, device: torch.device | str | None = None) -> bool:
    """Whether a compiled kernel exists for ``cell`` (regardless of :func:`available`).

    True for :class:`~carousel.cells.RNNCell`, :class:`~carousel.cells.GRUCell` (both
    formulations) and :class:`~carousel.cells.LSTMCell` (every variant switch, layer norm,
    full gate recurrence and projection included), with the step methods not overridden, on
    the CPU.
    """
    if device is not None and torch.device(device).type != "cpu":
        return False
    _, RNNCell, GRUCell, LSTMCell = _cells()
    return _family(cell) in (RNNCell, GRUCell, LSTMCell)


def _family(cell: Any) -> type | None:
    from carousel.bptt import _family as family

    return family(cell)


_CELLS: list[Any] = []


def _cells() -> list[Any]:
    """``(bptt module, RNNCell, GRUCell, LSTMCell)``, imported once (lazily: carousel.cells
    imports this package's users)."""
    if not _CELLS:
        from carousel import bptt
        from carousel.cells.gru import GRUCell
        from carousel.cells.lstm import LSTMCell
        from carousel.cells.rnn import RNNCell

        _CELLS.extend([bptt, RNNCell, GRUCell, LSTMCell])
    return _CELLS


def _ops() -> torch._ops._OpNamespace:
    return torch.ops.carousel_kernels


def _contig(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


#: Products with fewer multiply-adds run on torch directly: the extension sends only larger
#: float32 ones to oneDNN (``kOneDnnMinWork`` in csrc/recurrent.cpp), and its operator call
#: costs a few microseconds more than torch's (one-step generation makes many).
_ONEDNN_MIN_WORK = 1 << 21


def _big(a: Tensor, b: Tensor) -> bool:
    return a.dtype == torch.float32 and a.shape[0] * a.shape[1] * b.shape[1] >= _ONEDNN_MIN_WORK


def _mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b`` (``+ bias``, broadcast over the rows): large float32 products by the
    extension (oneDNN, about twice as fast as torch's BLAS call on some CPUs), else torch."""
    if _big(a, b):
        return _ops().matmul(a, b, bias)
    return a.mm(b) if bias is None else torch.addmm(bias, a, b)


def _mm_acc(out: Tensor, a: Tensor, b: Tensor) -> None:
    """``out += a @ b`` with the products of :func:`_mm`."""
    if _big(a, b):
        _ops().matmul_acc(out, a, b)
    else:
        out.addmm_(a, b)


def _grad_with_prev(d: Tensor, states: Tensor, s0: Tensor) -> Tensor:
    """``sum_t d_t^T s_{t-1}`` (``(N, K)``): :func:`carousel.bptt._common.grad_with_prev`
    with the products of :func:`_mm`."""
    from carousel.bptt._common import grad_with_prev

    return grad_with_prev(d, states, s0, mm=_mm, mm_acc=_mm_acc)


def _grad_buffer(grad: Tensor | None, states: Tensor) -> Tensor:
    """``(T+1, B, H)``: zeros in row 0, the upstream gradient of ``states`` (``(T, B, H)``,
    ``None``: zero) below; the backward kernels accumulate into it."""
    T, B, H = states.shape
    if grad is None:
        return states.new_zeros(T + 1, B, H)
    out = states.new_empty(T + 1, B, H)
    out[0].zero_()
    out[1:].copy_(grad)
    return out


def _lstm_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    s0: Tensor | None,
    mask: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_ci: Tensor | None,
    w_cf: Tensor | None,
    w_co: Tensor | None,
    w_gg: Tensor | None,
    ln_ih: Tensor | None,
    ln_hh: Tensor | None,
    ln_c_w: Tensor | None,
    ln_c_b: Tensor | None,
    w_hr: Tensor | None,
    offsets: Sequence[int],
    flags: Sequence[int],
    ln_eps: float,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, tuple[Tensor | None, ...]]:
    """The forward pass: ``(hs, cs, ss, gates, saved)`` with ``ss`` ``None`` without FGR and
    ``saved`` what :meth:`LSTMKernelFunction.backward` reads. The input projections of all
    steps are one product; with layer norm the kernel normalises them row by row in the loop,
    beside ``W_hh h_{t-1}``, and adds the biases after. With a projection (``w_hr``) the kernel
    also returns ``m_t = o_t act(c_t)`` of every step (zero where masked), for ``W_hr``'s
    gradient."""
    from carousel.bptt._common import bias_sum

    T, B, I = x.shape
    x2 = x.reshape(T * B, I)
    bias = bias_sum(b_ih, b_hh)
    ln: list[Tensor | None] = []
    if ln_ih is not None:
        xw = _mm(x2, w_ih.t())  # (T*B, GH), normalised in place by the kernel
        if bias is None:
            bias = xw.new_zeros(xw.shape[-1])
        ln = [ln_ih, bias, ln_hh, ln_c_w, ln_c_b]
    else:
        xw = _mm(x2, w_ih.t(), bias)
    w_hh = w_hh.contiguous()
    w_ci, w_cf, w_co = _contig(w_ci), _contig(w_cf), _contig(w_co)
    h0, c0 = h0.contiguous(), c0.contiguous()
    fgr: list[Tensor] = []
    if w_gg is not None:
        assert s0 is not None, "run_sequence passes the gate state of a cell with FGR"
        fgr = [w_gg.contiguous(), s0.contiguous()]
    proj = [] if w_hr is None else [w_hr.contiguous()]
    out = _ops().lstm_forward(
        xw.view(T, B, -1), h0, c0, mask, w_hh, w_ci, w_cf, w_co, list(offsets), list(flags),
        ln, float(ln_eps), fgr, proj,
    )  # fmt: skip
    hs, cs, gates, acts = out[:4]
    xn, zn, rs_x, rs_z, cn, rs_c = out[4:10] if ln else (None,) * 6
    k = 10 if ln else 4
    ss = out[k] if fgr else None
    ms = out[-1] if proj else None
    saved = (
        x2, h0, c0, None if w_gg is None else fgr[1], mask, w_ih, w_hh, w_ci, w_cf, w_co,
        w_gg, ln_ih, ln_hh, ln_c_w, ln_c_b, gates, hs, cs, acts, ss,
        xn, rs_x, zn, rs_z, cn, rs_c, w_hr, ms,
    )  # fmt: skip
    return hs, cs, ss, gates, saved


def _gru_forward(
    x: Tensor,
    h0: Tensor,
    mask: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward pass: ``(x2, h0, w_hh, hs, gates, pn)``."""
    T, B, I = x.shape
    x2 = x.reshape(T * B, I)
    xw = _mm(x2, w_ih.t(), b_ih)
    w_hh = w_hh.contiguous()
    h0 = h0.contiguous()
    hs, gates, pn = _ops().gru_forward(xw.view(T, B, -1), h0, mask, w_hh, _contig(b_hh))
    return x2, h0, w_hh, hs, gates, pn


def _rnn_forward(
    x: Tensor,
    h0: Tensor,
    mask: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward pass: ``(x2, h0, w_hh, hs)``."""
    from carousel.bptt._common import bias_sum

    T, B, I = x.shape
    x2 = x.reshape(T * B, I)
    xw = _mm(x2, w_ih.t(), bias_sum(b_ih, b_hh))
    w_hh = w_hh.contiguous()
    h0 = h0.contiguous()
    return x2, h0, w_hh, _ops().rnn_forward(xw.view(T, B, -1), h0, mask, w_hh, relu)


class LSTMKernelFunction(torch.autograd.Function):
    """The LSTM family over a sequence with the compiled loop.

    ``apply(x, h0, c0, s0, mask, W_ih, W_hh, b_ih, b_hh, w_ci, w_cf, w_co, W_gg, ln_ih_weight,
    ln_hh_weight, ln_c_weight, ln_c_bias, W_hr, offsets, flags, ln_eps)`` with absent weights
    (and ``s0`` without full gate recurrence) ``None``; ``offsets`` the column offsets of
    ``i, f, g, o`` in the gate rows (-1: absent), ``flags`` ``(peephole, input_activation,
    output_activation, coupled)``; layer norm where ``ln_ih_weight`` is given, FGR where
    ``W_gg`` is, a projection (``h`` of size ``P``) where ``W_hr`` (``(P, H)``) is. Returns
    ``(hs, cs, ss, gates)`` as :class:`carousel.bptt.LSTMFunction` (``ss`` the FGR gate states
    in :meth:`~carousel.functional.LSTMVariant.recurrent_gate_names` order, ``None`` without
    FGR) but with the gates in torch.nn's order.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        s0: Tensor | None,
        mask: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_ci: Tensor | None,
        w_cf: Tensor | None,
        w_co: Tensor | None,
        w_gg: Tensor | None,
        ln_ih: Tensor | None,
        ln_hh: Tensor | None,
        ln_c_w: Tensor | None,
        ln_c_b: Tensor | None,
        w_hr: Tensor | None,
        offsets: Sequence[int],
        flags: Sequence[int],
        ln_eps: float,
        recompute: Recompute | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        keep_for_recompute(
            ctx, recompute, x, h0, c0, s0, mask, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, w_gg,
            ln_ih, ln_hh, ln_c_w, ln_c_b, w_hr, offsets, flags, ln_eps,
        )  # fmt: skip
        hs, cs, ss, gates, saved = _lstm_forward(
            x, h0, c0, s0, mask, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, w_gg,
            ln_ih, ln_hh, ln_c_w, ln_c_b, w_hr, offsets, flags, ln_eps,
        )  # fmt: skip
        ctx.offsets, ctx.flags = list(offsets), list(flags)
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        return hs, cs, ss, gates

    @staticmethod
    @twice_differentiable
    def backward(
        ctx: Any,
        grad_hs: Tensor | None,
        grad_cs: Tensor | None,
        grad_ss: Tensor | None,
        _grad_gates: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        from carousel.bptt._common import bias_grads, prev_states

        if grad_hs is None and grad_cs is None and grad_ss is None:
            return (None,) * 21
        (x2, h0, c0, s0, mask, w_ih, w_hh, w_ci, w_cf, w_co, w_gg, ln_ih, ln_hh, ln_c_w, ln_c_b,
         gates, hs, cs, acts, ss, xn, rs_x, zn, rs_z, cn, rs_c, w_hr, ms,
         ) = ctx.saved_tensors  # fmt: skip
        T, B, P = hs.shape
        H = cs.shape[-1]
        GH = gates.shape[-1]
        needs = ctx.needs_input_grad
        ln, fgr, proj = ln_ih is not None, w_gg is not None, w_hr is not None
        dH, dC = _grad_buffer(grad_hs, hs), _grad_buffer(grad_cs, cs)
        dS = _grad_buffer(grad_ss, ss) if fgr else None
        out = _ops().lstm_backward(
            gates, cs, c0, acts, dH, dC, mask, w_hh, w_ci, w_cf, w_co, ctx.offsets, ctx.flags,
            [ln_ih, xn, rs_x, ln_hh, zn, rs_z, ln_c_w, cn, rs_c] if ln else [],
            [w_gg, dS] if fgr else [], [w_hr] if proj else [],
        )  # fmt: skip
        dA = out[0]  # with layer norm: the gradient of W_ih x (through its layer norm)
        dA2 = dA.view(T * B, GH)
        g_ih = g_hh = g_c = b_c = None
        d_ci = d_cf = d_co = None
        oi, of, _, oo = ctx.offsets
        if ln:  # the gains', biases' and peepholes' gradients summed by the kernel
            dZ, g_ih, g_hh, g_b, g_c, b_c, g_peep = out[1:8]
            dW_hh = _grad_with_prev(dZ, hs, h0) if needs[6] else None
            db_ih = db_hh = None
            if ctx.has_bias:
                db_ih = g_b if needs[7] else None
                db_hh = (g_b.clone() if needs[7] else g_b) if needs[8] else None
            d_ci, d_cf, d_co = (
                g if w is not None and need else None
                for g, w, need in zip(g_peep, (w_ci, w_cf, w_co), needs[9:12])
            )
        else:
            dW_hh = _grad_with_prev(dA, hs, h0) if needs[6] else None
            db_ih, db_hh = bias_grads(dA, ctx.has_bias, needs[7], needs[8])
            if w_ci is not None or w_cf is not None or w_co is not None:
                c_prev = prev_states(c0, cs)
                if w_ci is not None and needs[9]:
                    d_ci = (dA[..., oi : oi + H] * c_prev).sum((0, 1))
                if w_cf is not None and needs[10]:
                    d_cf = (dA[..., of : of + H] * c_prev).sum((0, 1))
                if w_co is not None and needs[11]:
                    d_co = (dA[..., oo : oo + H] * cs).sum((0, 1))
        dx = _mm(dA2, w_ih).view(T, B, -1) if needs[0] else None
        dW_ih = _mm(dA2.t(), x2) if needs[5] else None
        dW_gg = _grad_with_prev(out[-1], ss, s0) if fgr and needs[12] else None
        dW_hr = None
        if proj and needs[17]:  # sum_t delta h_t^T m_t (m_t zero where masked)
            dW_hr = _mm(dH[1:].view(T * B, P).t(), ms.view(T * B, H))
        return (
            dx, dH[0] if needs[1] else None, dC[0] if needs[2] else None,
            dS[0] if dS is not None and needs[3] else None, None, dW_ih, dW_hh, db_ih, db_hh,
            d_ci, d_cf, d_co, dW_gg, g_ih, g_hh, g_c, b_c, dW_hr, None, None, None,
        )  # fmt: skip


class GRUKernelFunction(torch.autograd.Function):
    """torch.nn's GRU over a sequence with the compiled loop: ``apply(x, h0, mask, W_ih,
    W_hh, b_ih, b_hh)``; returns ``(hs, gates)`` as :class:`carousel.bptt.GRUFunction`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        mask: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        recompute: Recompute | None = None,
    ) -> tuple[Tensor, Tensor]:
        keep_for_recompute(ctx, recompute, x, h0, mask, w_ih, w_hh, b_ih, b_hh)
        x2, h0, w_hh, hs, gates, pn = _gru_forward(x, h0, mask, w_ih, w_hh, b_ih, b_hh)
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(x2, h0, mask, w_ih, w_hh, hs, gates, pn)
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        return hs, gates

    @staticmethod
    @twice_differentiable
    def backward(
        ctx: Any, grad_hs: Tensor | None, _grad_gates: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        from carousel.bptt._common import sum_rows

        if grad_hs is None:
            return (None,) * 7
        x2, h0, mask, w_ih, w_hh, hs, gates, pn = ctx.saved_tensors
        T, B, H = hs.shape
        needs = ctx.needs_input_grad
        dH = _grad_buffer(grad_hs, hs)
        dX, dP = _ops().gru_backward(gates, pn, hs, h0, dH, mask, w_hh)
        dX2 = dX.view(T * B, 3 * H)
        dx = _mm(dX2, w_ih).view(T, B, -1) if needs[0] else None
        dW_ih = _mm(dX2.t(), x2) if needs[3] else None
        dW_hh = _grad_with_prev(dP, hs, h0) if needs[4] else None
        db_ih = sum_rows(dX) if ctx.has_bias and needs[5] else None
        db_hh = sum_rows(dP) if ctx.has_bias and needs[6] else None
        return dx, dH[0] if needs[1] else None, None, dW_ih, dW_hh, db_ih, db_hh


def _gru_cho_forward(
    x: Tensor,
    h0: Tensor,
    mask: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward pass of Cho's GRU: ``(x2, h0, w_hh, hs, gates, rh)``."""
    from carousel.bptt._common import bias_sum

    T, B, I = x.shape
    x2 = x.reshape(T * B, I)
    xw = _mm(x2, w_ih.t(), bias_sum(b_ih, b_hh))
    w_hh = w_hh.contiguous()
    h0 = h0.contiguous()
    hs, gates, rh = _ops().gru_cho_forward(xw.view(T, B, -1), h0, mask, w_hh)
    return x2, h0, w_hh, hs, gates, rh


class GRUChoKernelFunction(torch.autograd.Function):
    """Cho et al. 2014's GRU (``reset_after=False``) over a sequence with the compiled loop:
    ``apply(x, h0, mask, W_ih, W_hh, b_ih, b_hh)``; returns ``(hs, gates)`` as
    :class:`carousel.bptt.GRUFunction`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        mask: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        recompute: Recompute | None = None,
    ) -> tuple[Tensor, Tensor]:
        keep_for_recompute(ctx, recompute, x, h0, mask, w_ih, w_hh, b_ih, b_hh)
        x2, h0, w_hh, hs, gates, rh = _gru_cho_forward(x, h0, mask, w_ih, w_hh, b_ih, b_hh)
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(x2, h0, mask, w_ih, w_hh, hs, gates, rh)
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        return hs, gates

    @staticmethod
    @twice_differentiable
    def backward(
        ctx: Any, grad_hs: Tensor | None, _grad_gates: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        from carousel.bptt._common import bias_grads

        if grad_hs is None:
            return (None,) * 7
        x2, h0, mask, w_ih, w_hh, hs, gates, rh = ctx.saved_tensors
        T, B, H = hs.shape
        needs = ctx.needs_input_grad
        dH = _grad_buffer(grad_hs, hs)
        dA = _ops().gru_cho_backward(gates, hs, h0, dH, mask, w_hh)
        dA2 = dA.view(T * B, 3 * H)
        dx = _mm(dA2, w_ih).view(T, B, -1) if needs[0] else None
        dW_ih = _mm(dA2.t(), x2) if needs[3] else None
        dW_hh = None
        if needs[4]:
            dW_hh = torch.cat(
                [
                    _grad_with_prev(dA[..., : 2 * H], hs, h0),  # sum_t d[r,z]_t^T h_{t-1}
                    _mm(dA2[:, 2 * H :].t(), rh.view(T * B, H)),  # sum_t dn_t^T (r_t h_{t-1})
                ]
            )
        db_ih, db_hh = bias_grads(dA, ctx.has_bias, needs[5], needs[6])
        return dx, dH[0] if needs[1] else None, None, dW_ih, dW_hh, db_ih, db_hh


class RNNKernelFunction(torch.autograd.Function):
    """Elman RNN over a sequence with the compiled loop: ``apply(x, h0, mask, W_ih, W_hh,
    b_ih, b_hh, relu)``; returns the states as :class:`carousel.bptt.RNNFunction`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        mask: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        relu: bool,
        recompute: Recompute | None = None,
    ) -> Tensor:
        keep_for_recompute(ctx, recompute, x, h0, mask, w_ih, w_hh, b_ih, b_hh, relu)
        x2, h0, w_hh, hs = _rnn_forward(x, h0, mask, w_ih, w_hh, b_ih, b_hh, relu)
        ctx.relu = relu
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(x2, h0, mask, w_ih, w_hh, hs)
        ctx.set_materialize_grads(False)
        return hs

    @staticmethod
    @twice_differentiable
    def backward(ctx: Any, grad_hs: Tensor | None) -> tuple[Tensor | None, ...]:
        from carousel.bptt._common import bias_grads

        if grad_hs is None:
            return (None,) * 8
        x2, h0, mask, w_ih, w_hh, hs = ctx.saved_tensors
        T, B, H = hs.shape
        needs = ctx.needs_input_grad
        dH = _grad_buffer(grad_hs, hs)
        dA = _ops().rnn_backward(hs, dH, mask, w_hh, ctx.relu)
        dA2 = dA.view(T * B, H)
        dx = _mm(dA2, w_ih).view(T, B, -1) if needs[0] else None
        dW_ih = _mm(dA2.t(), x2) if needs[3] else None
        dW_hh = _grad_with_prev(dA, hs, h0) if needs[4] else None
        db_ih, db_hh = bias_grads(dA, ctx.has_bias, needs[5], needs[6])
        return dx, dH[0] if needs[1] else None, None, dW_ih, dW_hh, db_ih, db_hh, None


def _fields(state: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (state,) if isinstance(state, Tensor) else tuple(state)


def _lstm_layout(cell: LSTMCell) -> tuple[list[int], list[int]]:
    v = cell.variant
    names = v.gate_names()
    H = cell.hidden_size
    offsets = [names.index(n) * H if n in names else -1 for n in ("i", "f", "g", "o")]
    flags = [int(v.peephole), int(v.input_activation), int(v.output_activation), int(v.coupled)]
    return offsets, flags


# torch.compile runs the whole time loop eagerly, as one call: Dynamo cannot trace the compiled
# kernels' C++ operators, and tracing the hand-written loop would unroll every step (a new
# graph for every sequence length)
@torch.compiler.disable
def run_sequence(
    cell: Any,
    params: dict[str, Tensor] | None,
    x: Tensor,
    state0: Any,
    mask: Tensor | None,
    *,
    return_states: bool = False,
    return_gates: bool = False,
) -> SequenceResult:
    """Run a built-in cell over a sequence with the compiled kernel.

    Same contract and results as :func:`carousel.bptt.run_sequence`, which it calls instead
    where the kernel is not :func:`available` or the cell or device is not covered
    (:func:`supports`), and for dtypes other than float32/float64.

    Args:
        cell: a built-in cell (see :func:`carousel.bptt.supports`).
        params: the weights by the cell's parameter names, or ``None`` for the cell's own.
        x: ``(T, B, I)``.
        state0: the initial state, fields ``(B, *)``.
        mask: ``(T, B)`` bool, True where a step is valid, or ``None``.
        return_states: also return the state after every step (differentiable).
        return_gates: also return the gate activations (not differentiable).

    Returns:
        :class:`~carousel.layers.sequence.SequenceResult` ``(output, state, states, gates)``.

    Raises:
        TypeError: if ``cell`` is not a supported built-in cell.

    Shape:
        - output ``(T, B, O)``; state and states fields ``(B, *)`` and ``(T, B, *)``.
    """
    from carousel.functional.lstm import LSTMGateState, LSTMState
    from carousel.layers.sequence import SequenceResult

    bptt, _, GRUCell, LSTMCell = _cells()
    if (
        x.dtype not in (torch.float32, torch.float64)
        or not supports(cell, x.device)
        or not available()
    ):
        return bptt.run_sequence(
            cell, params, x, state0, mask, return_states=return_states, return_gates=return_gates
        )
    if params is None:
        params = {n: getattr(cell, n) for n in cell.param_names()}
    x = x.contiguous()
    if mask is not None:
        mask = mask.contiguous()
    gates: dict[str, Tensor] = {}
    states: Tensor | LSTMState | LSTMGateState
    fam = _family(cell)
    # without autograd (inference), the forward pass alone, without the Function's overhead
    grad = torch.is_grad_enabled() and (
        x.requires_grad
        or any(t.requires_grad for t in _fields(state0))
        or any(p.requires_grad for p in params.values())
    )
    if fam is LSTMCell:
        offsets, flags = _lstm_layout(cell)
        fgr = cell.variant.full_gate_recurrence
        lstm_args = (
            x, state0[0], state0[1], state0[2] if fgr else None, mask, params["weight_ih"],
            params["weight_hh"], params.get("bias_ih"), params.get("bias_hh"),
            params.get("weight_ci"), params.get("weight_cf"), params.get("weight_co"),
            params.get("weight_gg"), params.get("ln_ih_weight"), params.get("ln_hh_weight"),
            params.get("ln_c_weight"), params.get("ln_c_bias"), params.get("weight_hr"),
            offsets, flags, cell.ln_eps,
        )  # fmt: skip
        if grad:
            hs, cs, ss, g = LSTMKernelFunction.apply(*lstm_args, bptt.reference_recompute(cell))
        else:
            hs, cs, ss, g = _lstm_forward(*lstm_args)[:4]
        states = LSTMGateState(hs, cs, ss) if fgr else LSTMState(hs, cs)
        if return_gates:
            H = cell.hidden_size
            names = cell.variant.gate_names()
            blocks = {n: g[..., k * H : (k + 1) * H] for k, n in enumerate(names)}
            for name in ("i", "f", "g", "o"):
                if name in blocks:
                    gates[name] = blocks[name]
                elif name == "f" and cell.variant.coupled:
                    gates["f"] = 1.0 - blocks["i"]
    elif fam is GRUCell:
        gru_args = (x, state0, mask, params["weight_ih"], params["weight_hh"],
                    params.get("bias_ih"), params.get("bias_hh"))  # fmt: skip
        fn: type[GRUKernelFunction | GRUChoKernelFunction]
        if cell.reset_after:
            fn, fwd = GRUKernelFunction, _gru_forward
        else:
            fn, fwd = GRUChoKernelFunction, _gru_cho_forward
        if grad:
            hs, g = fn.apply(*gru_args, bptt.reference_recompute(cell))
        else:
            hs, g = fwd(*gru_args)[3:5]
        states = hs
        if return_gates:
            gates = dict(zip(("r", "z", "n"), g.chunk(3, dim=-1)))
    else:
        relu = cell.nonlinearity == "relu"
        rnn_args = (x, state0, mask, params["weight_ih"], params["weight_hh"],
                    params.get("bias_ih"), params.get("bias_hh"), relu)  # fmt: skip
        if grad:
            hs = RNNKernelFunction.apply(*rnn_args, bptt.reference_recompute(cell))
        else:
            hs = _rnn_forward(*rnn_args)[3]
        states = hs
    if mask is None:
        output = hs
    else:
        m = mask.unsqueeze(-1).to(hs.dtype)
        output = hs * m
        if return_gates:
            gates = {k: v * m for k, v in gates.items()}
    final = states[-1] if isinstance(states, Tensor) else type(states)(*(s[-1] for s in states))
    return SequenceResult(
        output, final, states if return_states else None, gates if return_gates else None
    )
