"""The matrix products of the BPTT functions, on the faster of torch's two CPU libraries.

On the CPU ``torch.mm`` and ``addmm`` call MKL, while ``torch.nn.LSTM`` runs oneDNN. On AMD
processors MKL takes its AVX2 code even where the core has AVX-512; oneDNN picks its kernels
from the instruction set alone. Measured on an AMD EPYC (Zen 5, AVX-512), torch 2.13, float32,
one thread: ``torch.mm`` 78-89 GFLOP/s, oneDNN's matrix product 138-200 GFLOP/s from about 30
million multiply-adds; oneDNN costs about 15-20 us more per call, so it is slower below about
2 million multiply-adds and 1.2-2.4x faster above 4 million (``benchmarks/products.py``). A
time loop's per-step products use a weight packed once into oneDNN's layout, which cuts that
cost, so they go to oneDNN from :data:`MIN_PACKED_MACS` multiply-adds per thread. Measured
per step (``out += x W^T``, ``x`` ``32 x K``): on one thread oneDNN is 1.07-1.10x faster at 1
million multiply-adds, 1.13-1.32x at 1.6 million and 1.4-1.6x at 2.1 million (the first
issue-2 shape's ``32 x 128`` by ``128 x 512``: 29-32 against 43-46 us); on two threads
0.72-0.96x at 1 million, 0.87-1.06x at 1.6 million and 1.14-1.29x at 2.1 million. On an AMD
EPYC of the previous generation (Zen 4, family 25, whose AVX-512 runs on 256-bit units) the
packed products lose up to about 4 million multiply-adds: at ``32 x K`` rows, 0.68-0.74x at 1
million, 0.73-0.83x at 1.6 million and 0.84x at 2.1 million on one thread, 0.79x at 2.1
million on two, and 1.12-1.14x at 8.4 million on either; so there they keep to
:data:`MIN_MACS` (:func:`packed_threshold`).

So, for float32 tensors on such a CPU, every product of at least :data:`MIN_MACS` multiply-adds
(the per-step products of :func:`acc_fn` and :func:`into_fn`: see :func:`packed_threshold`) goes
to oneDNN (``torch.ops.mkldnn._linear_pointwise``, the operator that torch's own compiler emits
for a linear layer), every other one to torch's ``mm``; the compiled kernels
(:mod:`carousel.kernels`) send their products over all steps to oneDNN likewise, from C++. An
operand with gaps between its rows (a slice of a wider buffer) also stays on ``mm``: oneDNN runs
such a weight on its reference kernel. On Intel processors MKL runs its AVX-512 code, so ``mm``
is kept there (unmeasured: no Intel machine at hand). ``CAROUSEL_ONEDNN_PRODUCTS=1`` takes
oneDNN on any CPU whose torch has it, ``=0`` never, and neither does
``torch.backends.mkldnn.flags(enabled=False)``. float64 always takes ``mm`` (oneDNN has no
float64 product), so the float64 tests of the hand-written passes against autograd do not reach
this choice; float32 results differ from ``mm``'s by rounding only
(``tests/test_bptt_products.py``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "MIN_MACS",
    "MIN_PACKED_MACS",
    "acc_fn",
    "enabled",
    "into_fn",
    "linear",
    "mm",
    "mm_acc",
    "packed_threshold",
]

#: Products with fewer multiply-adds than this stay on ``torch.mm`` (oneDNN's per-call cost).
MIN_MACS = 1 << 22
#: The same for a time loop's per-step products, whose weight is packed once (:func:`acc_fn`),
#: per thread of torch's (see :func:`packed_threshold`).
MIN_PACKED_MACS = 1 << 20


@functools.cache
def _cpu_field(name: str) -> str:
    """The first ``name`` field of ``/proc/cpuinfo`` (``""`` where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def _vendor() -> str:
    return _cpu_field("vendor_id")


@functools.cache
def _half_width_avx512() -> bool:
    """Whether the CPU is AMD's Zen 4 (family 25 with AVX-512), which runs each 512-bit
    instruction on 256-bit units. MKL's AVX2 code is nearly as fast there, and the per-step
    products stay on ``mm`` up to :data:`MIN_MACS` (:func:`packed_threshold`)."""
    return _vendor() == "AuthenticAMD" and _cpu_field("cpu family") == "25"


@functools.cache
def _available(setting: str) -> bool:
    if setting == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - present in builds with oneDNN
    except (AttributeError, RuntimeError):
        return False
    if setting == "1":
        return True
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith("AVX512") and _vendor() not in ("", "GenuineIntel")


def enabled(t: Tensor) -> bool:
    """Whether products of ``t``'s kind (device, dtype) may go to oneDNN."""
    return (
        t.dtype == torch.float32
        and t.device.type == "cpu"
        and not t.is_sparse
        and bool(torch.backends.mkldnn.enabled)  # a ContextProp to type checkers
        and _available(os.environ.get("CAROUSEL_ONEDNN_PRODUCTS", ""))
    )


def _dense(t: Tensor) -> bool:
    """Row-major or column-major without gaps. oneDNN runs a weight with gaps between its rows
    (a slice of a wider buffer) on its reference kernel, thousands of times slower (measured:
    6 s for a 384 x 3168 x 384 product); such products stay on torch's ``mm``."""
    return t.is_contiguous() or t.t().is_contiguous()


def _onednn(macs: int, t: Tensor, *dense: Tensor, least: int | None = None) -> bool:
    """Whether a product of ``macs`` multiply-adds on tensors of ``t``'s kind goes to oneDNN;
    the operands ``dense`` must be :func:`_dense`; ``least``: the threshold (default
    :data:`MIN_MACS`)."""
    least = MIN_MACS if least is None else least
    return macs >= least and enabled(t) and all(_dense(u) for u in dense)


def _dnn(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ w.T (+ bias)`` by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def _mm_onednn(a: Tensor, b: Tensor) -> bool:
    return _onednn(a.shape[0] * a.shape[1] * b.shape[1], a, a, b)


def _dnn_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` by oneDNN. A transposed ``a`` (the gradients of all steps, ``dA.t()``, in a
    weight gradient) is computed as ``(b^T a^T)^T``, which oneDNN runs faster (measured)."""
    if a.stride(0) == 1 and a.stride(1) != 1:
        return _dnn(b.t(), a).t()
    return _dnn(a, b.t())


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ w.T + bias`` for ``x`` ``(M, K)``, ``w`` ``(N, K)``: a new ``(M, N)`` tensor."""
    if _onednn(x.shape[0] * w.numel(), x, x, w):
        return _dnn(x, w, bias)
    return x.mm(w.t()) if bias is None else torch.addmm(bias, x, w.t())


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` (a new tensor; possibly a transposed view)."""
    return _dnn_mm(a, b) if _mm_onednn(a, b) else a.mm(b)


def mm_acc(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a @ b``."""
    return out.add_(_dnn_mm(a, b)) if _mm_onednn(a, b) else out.addmm_(a, b)


def packed_threshold() -> int:
    """The fewest multiply-adds of a per-step product that goes to oneDNN with a packed weight:
    :data:`MIN_PACKED_MACS` per thread of torch's, at most :data:`MIN_MACS`. torch's ``mm``
    gains more from a second thread at these sizes than oneDNN does (module docstring); more
    than two threads are unmeasured here and keep to the unpacked threshold. On Zen 4
    (:func:`_half_width_avx512`) every thread count keeps to :data:`MIN_MACS`."""
    if _half_width_avx512():
        return MIN_MACS
    return min(MIN_PACKED_MACS * max(1, torch.get_num_threads()), MIN_MACS)


def _packed(w: Tensor, rows: int) -> Tensor:
    """``w`` (``(N, K)``) in oneDNN's own layout for products with ``rows``-row inputs, or
    ``w`` made contiguous where this torch cannot pack. A plain weight is reordered into that
    layout on every call: for a time loop's per-step products, packing once is 1.2-1.8x faster
    (``benchmarks/products.py``)."""
    wc = w.contiguous()
    try:
        return torch.ops.mkldnn._reorder_linear_weight(wc, rows)
    except (AttributeError, RuntimeError):
        return wc


def acc_fn(w: Tensor, rows: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(out, x)``: ``out += x @ w.T`` for the ``rows x K`` inputs of a time loop, with the
    library chosen once (``w`` ``(N, K)``; on oneDNN, packed once)."""
    if _onednn(rows * w.numel(), w, least=packed_threshold()):
        wp = _packed(w, rows)
        return lambda out, x: out.add_(_dnn(x, wp))
    wt = w.t()
    return lambda out, x: out.addmm_(x, wt)


def into_fn(w: Tensor, rows: int, bias: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(out, x)``: ``out = x @ w.T (+ bias)``, like :func:`acc_fn`."""
    if _onednn(rows * w.numel(), w, least=packed_threshold()):
        wp = _packed(w, rows)
        return lambda out, x: out.copy_(_dnn(x, wp, bias))
    wt = w.t()
    if bias is None:
        return lambda out, x: torch.mm(x, wt, out=out)
    return lambda out, x: torch.addmm(bias, x, wt, out=out)
