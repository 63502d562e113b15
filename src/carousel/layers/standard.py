"""``carousel.RNN``, ``carousel.LSTM`` and ``carousel.GRU``: drop-in replacements for their
torch.nn namesakes (same signature, defaults, parameter names and outputs) with the options
torch.nn lacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from carousel._checks import check_positive_int
from carousel.cells.base import RecurrentCell
from carousel.cells.gru import GRUCell
from carousel.cells.lstm import LSTMCell
from carousel.cells.rnn import RNNCell
from carousel.functional.lstm import LSTMState, LSTMVariant
from carousel.layers.recurrent import RecurrentBase

__all__ = ["GRU", "LSTM", "RNN"]


_C = TypeVar("_C", bound=RecurrentCell)


def _make_cells(
    owner: str,
    make: Callable[[int], _C],
    input_size: int,
    hidden_size: int,
    out_size: int,
    num_layers: int,
    bidirectional: bool,
) -> list[_C]:
    check_positive_int(owner, "input_size", input_size)
    check_positive_int(owner, "hidden_size", hidden_size)
    check_positive_int(owner, "num_layers", num_layers)
    D = 2 if bidirectional else 1
    return [
        make(input_size if l == 0 else D * out_size) for l in range(num_layers) for _ in range(D)
    ]


class _Standard(RecurrentBase):
    """Shared by the three torch.nn-compatible layers: the fused (native kernel) path."""

    _vf_name: str
    input_size: int
    hidden_size: int
    proj_size: int = 0  # torch.nn's GRU and RNN have it too

    @property
    def mode(self) -> str:
        """torch.nn's name of the cell: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or
        ``"RNN_RELU"``."""
        return {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}[
            self._vf_name
        ]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """The parameters of each layer and direction in torch.nn's order, as
        ``torch.nn.LSTM.all_weights``."""
        return [list((self._params(k) or {}).values()) for k in range(len(self._param_names))]

    def _fused_supported(self) -> bool:
        return True

    def _flat_weights(self) -> list[Tensor]:
        return [self._own_weight(key) for key in self._flat_keys]

    def _setup(self, cells: Sequence[Any], **options: Any) -> None:
        super()._setup(cells, **options)
        self.flatten_parameters()  # for a layer made on the GPU

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        self.flatten_parameters()  # after .to(), .cuda(), .half(), ...
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.flatten_parameters()  # a whole layer unpickled onto the GPU

    def _cudnn_flatten_args(self) -> tuple[int, int, str, int, int, int, bool, bool]:
        """The arguments after the weights of ``torch._cudnn_rnn_flatten_weight``, as
        ``torch.nn``'s layers pass them (the mode by name): weights per layer and direction,
        input size, mode, hidden size, projection size, layers, batch_first (``False``: the
        fused path runs time-major) and bidirectional."""
        return (
            len(self._param_names[0]),  # w_ih, w_hh [, b_ih, b_hh] [, w_hr]
            self.input_size,
            self.mode,
            self.hidden_size,
            self.proj_size,
            self.num_layers,
            False,
            self.bidirectional,
        )

    def flatten_parameters(self) -> None:
        """Put the weights into one buffer in cuDNN's layout, as ``torch.nn.LSTM`` does, so that
        cuDNN reads them in place; otherwise it copies them at every call and warns that the
        weights "are not part of single contiguous chunk of memory". Called at construction and
        after ``.to()``/``.cuda()``; as in ``torch.nn``, a no-op unless the weights are on a GPU
        that cuDNN runs, of one dtype, without aliases, and the configuration is one cuDNN runs
        (not the variants, nor Cho's GRU). The parameters stay the same objects."""
        if not self._fused_supported():
            return
        weights = self._flat_weights()
        if not all(isinstance(w, nn.Parameter) for w in weights):
            return  # a parametrized or pruned weight is computed anew at each call
        first = weights[0]
        for w in weights:
            if not w.is_cuda or w.dtype != first.dtype or not torch.backends.cudnn.is_acceptable(w):
                return
        if len({w.data_ptr() for w in weights}) != len(weights):
            return
        import torch.backends.cudnn.rnn as cudnn_rnn

        n, input_size, mode, hidden_size, proj_size, layers, batch_first, bidirectional = (
            self._cudnn_flatten_args()
        )
        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                torch._cudnn_rnn_flatten_weight(
                    weights, n, input_size, cudnn_rnn.get_cudnn_mode(mode), hidden_size,
                    proj_size, layers, batch_first, bidirectional,
                )  # fmt: skip

    def _hx_for_vf(self, states0: list[Any]) -> Any:
        return torch.stack(states0)

    def _state_from_vf(self, hx: Any) -> Any:
        return hx

    # torch.compile runs torch's native kernel eagerly, as it does for torch.nn's layers (Dynamo
    # graph-breaks on them; traced, the CPU kernel fails in its fake-tensor form)
    @torch.compiler.disable
    def _fused_forward(
        self, x: Tensor, states0: list[Any], lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        vf = getattr(torch._VF, self._vf_name)
        hx = self._hx_for_vf(states0)
        args = (self._flat_weights(), self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional)  # fmt: skip
        if lengths is None:
            out, *h = vf(x, hx, *args, False)
            return out, self._state_from_vf(h if len(h) > 1 else h[0])
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        perm, inv = packed.sorted_indices, packed.unsorted_indices
        hx = _index_state(hx, perm)
        out, *h = vf(packed.data, packed.batch_sizes, hx, *args)
        out = packed._replace(data=out)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, self._state_from_vf(_index_state(h if len(h) > 1 else h[0], inv))


class _LSTMSwitches(TypedDict):
    """The variant keywords :class:`LSTM` passes on to each :class:`~carousel.cells.LSTMCell`."""

    variant: str | LSTMVariant | None
    peephole: bool | None
    input_gate: bool | None
    forget_gate: bool | None
    output_gate: bool | None
    input_activation: bool | None
    output_activation: bool | None
    coupled: bool | None
    full_gate_recurrence: bool | None
    layer_norm: bool | None


def _index_state(hx: Any, idx: Tensor | None) -> Any:
    """``hx`` with its rows (dim 1) in the order ``idx`` (``None``: as they are)."""
    if idx is None:
        return hx
    if isinstance(hx, Tensor):
        return hx.index_select(1, idx)
    return (
        type(hx)(t.index_select(1, idx) for t in hx)
        if not isinstance(hx, list)
        else [t.index_select(1, idx) for t in hx]
    )


class RNN(_Standard):
    r"""Elman RNN layer, a drop-in replacement for ``torch.nn.RNN``.

    .. math::

        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \qquad
        \phi \in \{\tanh, \mathrm{ReLU}\}

    Args:
        input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout,
        bidirectional, device, dtype: as ``torch.nn.RNN``.
        learn_initial_state: learn ``h_0`` per layer and direction (``initial_h_l0``, ...).
        impl: ``"auto"`` (default), ``"fused"``, ``"compiled"``, ``"bptt"`` or
            ``"reference"``.

    Shape:
        - input ``(T, B, I)``; output ``(T, B, D*H)``; ``h_n`` ``(L*D, B, H)``.

    Example:
        >>> import torch, carousel
        >>> rnn = carousel.RNN(4, 8, num_layers=2)
        >>> out, h = rnn(torch.randn(5, 3, 4))
        >>> tuple(out.shape), tuple(h.shape)
        ((5, 3, 8), (2, 3, 8))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        learn_initial_state: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.nonlinearity = nonlinearity
        self.bias = bool(bias)
        cells = _make_cells(
            "RNN",
            lambda i: RNNCell(i, hidden_size, bias, nonlinearity, device=device, dtype=dtype),
            input_size, hidden_size, hidden_size, num_layers, bidirectional,
        )  # fmt: skip
        self._vf_name = "rnn_tanh" if nonlinearity == "tanh" else "rnn_relu"
        self._setup(
            cells, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
            dropout=dropout, learn_initial_state=learn_initial_state, impl=impl,
            torch_names=True,
        )  # fmt: skip

    def _fused_preferred(self, device: torch.device) -> bool:
        # torch.nn.RNN has no oneDNN path on CPU; the compiled kernels (and bptt) are faster there
        # (benchmarks/layers.py, docs/performance.md).
        return device.type != "cpu"

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        rest = super().extra_repr()
        return s + (", " + rest if rest else "")


class GRU(_Standard):
    r"""Gated recurrent unit layer, a drop-in replacement for ``torch.nn.GRU``.

    .. math::

        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        device, dtype: as ``torch.nn.GRU``.
        reset_after: ``False`` applies the reset gate before the recurrent matrix, as in Cho et
            al. 2014 (see :class:`~carousel.cells.GRUCell`).
        learn_initial_state: learn ``h_0`` per layer and direction.
        impl: ``"auto"`` (default), ``"fused"``, ``"compiled"``, ``"bptt"`` or
            ``"reference"``.

    Shape:
        - input ``(T, B, I)``; output ``(T, B, D*H)``; ``h_n`` ``(L*D, B, H)``.
    """

    _vf_name = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = True,
        learn_initial_state: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bias = bool(bias)
        self.reset_after = bool(reset_after)
        cells = _make_cells(
            "GRU",
            lambda i: GRUCell(i, hidden_size, bias, reset_after=reset_after, device=device,
                              dtype=dtype),
            input_size, hidden_size, hidden_size, num_layers, bidirectional,
        )  # fmt: skip
        self._setup(
            cells, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
            dropout=dropout, learn_initial_state=learn_initial_state, impl=impl,
            torch_names=True,
        )  # fmt: skip

    def _fused_supported(self) -> bool:
        return self.reset_after

    def _fused_preferred(self, device: torch.device) -> bool:
        # torch.nn.GRU has no oneDNN path on CPU; the compiled kernels (and bptt) are faster there.
        return device.type != "cpu"

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.reset_after:
            s += ", reset_after=False"
        rest = super().extra_repr()
        return s + (", " + rest if rest else "")


class LSTM(_Standard):
    r"""LSTM layer, a drop-in replacement for ``torch.nn.LSTM``, with every variant of Greff et
    al. 2017 and layer normalisation as options.

    .. math::

        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \qquad h_t = o_t \odot \tanh(c_t)

    (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000); the variants
    change it as :class:`~carousel.cells.LSTMCell` documents. Parameter names are torch.nn's
    (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) plus the variants' extra weights under the
    same suffixes (``weight_ci_l0``, ``weight_gg_l0``, ``ln_c_weight_l0``, ...), so
    ``load_state_dict`` works both ways with a standard ``torch.nn.LSTM``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        proj_size, device, dtype: as ``torch.nn.LSTM``.
        variant, peephole, input_gate, forget_gate, output_gate, input_activation,
        output_activation, coupled, full_gate_recurrence, layer_norm: the cell variant (see
            :class:`~carousel.cells.LSTMCell`).
        learn_initial_state: learn ``h_0`` and ``c_0`` per layer and direction
            (``initial_h_l0``, ``initial_c_l0``, ...).
        impl: ``"auto"`` (default), ``"fused"``, ``"compiled"``, ``"bptt"`` or
            ``"reference"``.

    Shape:
        - input ``(T, B, I)``; output ``(T, B, D*H)``; state ``LSTMState(h_n, c_n)`` each
          ``(L*D, B, H)`` (``LSTMGateState`` with full gate recurrence).

    Example:
        >>> import torch, carousel
        >>> lstm = carousel.LSTM(4, 8, num_layers=2, peephole=True, learn_initial_state=True)
        >>> out, (h, c) = lstm(torch.randn(6, 3, 4), lengths=torch.tensor([6, 2, 4]))
        >>> tuple(out.shape), tuple(c.shape)
        ((6, 3, 8), (2, 3, 8))
    """

    _vf_name = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str | LSTMVariant | None = None,
        peephole: bool | None = None,
        input_gate: bool | None = None,
        forget_gate: bool | None = None,
        output_gate: bool | None = None,
        input_activation: bool | None = None,
        output_activation: bool | None = None,
        coupled: bool | None = None,
        full_gate_recurrence: bool | None = None,
        layer_norm: bool | None = None,
        learn_initial_state: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.proj_size = check_positive_int("LSTM", "proj_size", proj_size, minimum=0)
        self.bias = bool(bias)
        switches = _LSTMSwitches(
            variant=variant, peephole=peephole, input_gate=input_gate, forget_gate=forget_gate,
            output_gate=output_gate, input_activation=input_activation,
            output_activation=output_activation, coupled=coupled,
            full_gate_recurrence=full_gate_recurrence, layer_norm=layer_norm,
        )  # fmt: skip
        cells = _make_cells(
            "LSTM",
            lambda i: LSTMCell(i, hidden_size, bias, proj_size=proj_size, device=device,
                               dtype=dtype, **switches),
            input_size, hidden_size, proj_size or hidden_size, num_layers, bidirectional,
        )  # fmt: skip
        self.variant = cells[0].variant
        self._setup(
            cells, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
            dropout=dropout, learn_initial_state=learn_initial_state, impl=impl,
            torch_names=True,
        )  # fmt: skip

    def _fused_supported(self) -> bool:
        return self.variant.is_standard

    def _fused_preferred(self, device: torch.device) -> bool:
        # With proj_size torch has no oneDNN kernel on CPU (it warns and runs a generic loop);
        # the compiled kernels and the bptt path are faster there (docs/performance.md).
        return not (device.type == "cpu" and self.proj_size > 0)

    def _hx_for_vf(self, states0: list[Any]) -> tuple[Tensor, Tensor]:
        return (torch.stack([s.h for s in states0]), torch.stack([s.c for s in states0]))

    def _state_from_vf(self, h: Any) -> LSTMState:
        return LSTMState(h[0], h[1])

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if not self.variant.is_standard:
            s += f", variant={self.variant.acronym!r}"
        rest = super().extra_repr()
        return s + (", " + rest if rest else "")
