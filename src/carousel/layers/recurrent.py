"""Whole sequences: stacking, bidirectional, variable lengths, learned initial states, traces,
and the choice of implementation path, for any cell."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from carousel._checks import (
    autocast_on,
    check_choice,
    check_positive_int,
    check_probability,
    shape_str,
)
from carousel.cells.base import RecurrentCell
from carousel.layers.sequence import (
    SequenceResult,
    map_state,
    run_reference,
    state_fields,
)

__all__ = ["IMPLS", "Recurrent", "RecurrentBase", "RecurrentOutput"]

#: The implementation paths (STYLE.md section 2): ``"auto"`` picks the fastest path whose
#: results equal the reference; see :meth:`RecurrentBase.resolve_impl`. ``"compiled"`` is the
#: C++ kernel of :mod:`carousel.kernels`, which falls back to ``"bptt"`` where it is unavailable.
IMPLS = ("auto", "fused", "compiled", "bptt", "reference")


class _OutputPair(NamedTuple):
    output: Tensor | PackedSequence
    state: Any


class RecurrentOutput(_OutputPair):
    """The result of every layer: a 2-tuple ``(output, state)`` exactly as torch.nn returns it,
    so ``out, (h, c) = lstm(x)`` and ``out, h = gru(x)`` work unchanged.

    Attributes:
        output: ``(T, B, D*O)`` (``(B, T, D*O)`` with ``batch_first``), or a
            ``PackedSequence`` if the input was one. Zero past each sequence's end.
        state: final state, the cell's state type with fields ``(L*D, B, *)``: a tensor ``h_n``
            for RNN/GRU, ``LSTMState(h_n, c_n)`` for LSTM.
        states: with ``return_states=True``, the state after every step, the cell's state type
            with fields ``(L*D, T, B, *)`` (``(L*D, B, T, *)`` with ``batch_first``); past a
            sequence's end each holds that sequence's final state. Else ``None``.
        gates: with ``return_gates=True``, gate activations ``name -> (L*D, T, B, H)`` (batch
            first likewise; zero past a sequence's end). Else ``None``.

    The type never changes with the flags; they only fill ``states`` and ``gates``.
    """

    states: Any = None
    gates: dict[str, Tensor] | None = None


class _Runner(Protocol):
    """What runs one cell over one sequence (:mod:`carousel.layers.sequence`'s contract):
    :func:`~carousel.layers.sequence.run_reference`, :func:`carousel.bptt.run_sequence` or
    :func:`carousel.kernels.run_sequence`."""

    def __call__(
        self,
        cell: Any,
        params: dict[str, Tensor] | None,
        x: Tensor,
        state0: Any,
        mask: Tensor | None,
        /,
        *,
        return_states: bool = ...,
        return_gates: bool = ...,
    ) -> SequenceResult: ...


def _exporting() -> bool:
    """True while ``torch.export`` traces the model (a torch without
    ``torch.compiler.is_exporting`` cannot say: False)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


def _has_functorch_transform() -> bool:
    """True inside a ``torch.func`` transform (jvp, vmap, grad, ...).

    The fused and hand-written BPTT paths are ``autograd.Function`` s without forward-mode or
    batching rules, so ``"auto"`` takes the reference loop there (the Hessian-free optimizer's
    Gauss-Newton products run under ``torch.func.jvp``).
    """
    return torch._C._functorch.maybe_current_level() is not None


class RecurrentBase(nn.Module):
    """The engine behind :class:`Recurrent` and the torch.nn-compatible layers.

    Subclasses call :meth:`_setup` with one cell per layer and direction.
    """

    def _setup(
        self,
        cells: Sequence[Any],
        *,
        num_layers: int,
        bidirectional: bool,
        batch_first: bool,
        dropout: float,
        learn_initial_state: bool,
        impl: str,
        torch_names: bool,
    ) -> None:
        name = type(self).__name__
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.dropout = check_probability(name, "dropout", dropout)
        self.learn_initial_state = bool(learn_initial_state)
        self.impl = check_choice(name, "impl", impl, IMPLS)
        self._torch_names = torch_names
        D = 2 if bidirectional else 1
        if len(cells) != num_layers * D:
            raise ValueError(f"{name}: expected {num_layers * D} cells, got {len(cells)}")
        if dropout > 0 and num_layers == 1:
            import warnings

            warnings.warn(
                f"{name}: dropout={dropout} acts between layers and has no effect with "
                "num_layers=1",
                UserWarning,
                stacklevel=3,
            )
        self._param_names: list[tuple[str, ...]] = []
        if torch_names:
            # torch.nn names: the layer owns the weights (weight_ih_l0, ...); the cells keep
            # only their configuration and are called through step_with_params.
            for k, cell in enumerate(cells):
                names = cell.param_names()
                self._param_names.append(names)
                for n in names:
                    self.register_parameter(self._key(k, n), cell._parameters.pop(n))
            self._cells = list(cells)
            # the layer's own parameter keys per layer and direction, in torch.nn's order
            self._flat_keys = [self._key(k, n) for k in range(len(cells))
                               for n in self._param_names[k]]  # fmt: skip
        else:
            self.cells = nn.ModuleList(cells)
            for cell in cells:
                names = cell.param_names() if isinstance(cell, RecurrentCell) else ()
                self._param_names.append(names)
        # field names and shapes of each cell's state, for hx checks and learned states
        self._state_spec = []
        for k, cell in enumerate(cells):
            ref = cell.initial_state(1, device="meta")
            fields = ("h",) if isinstance(ref, Tensor) else tuple(ref._fields)
            shapes = [tuple(t.shape[1:]) for t in state_fields(ref)]
            self._state_spec.append((type(ref), fields, shapes))
            if learn_initial_state:
                p = next(iter(cell.parameters()), None) if not torch_names else None
                if p is None:
                    p = getattr(self, self._key(k, self._param_names[k][0]))
                for f, shp in zip(fields, shapes):
                    self.register_parameter(
                        self._initial_key(k, f),
                        nn.Parameter(torch.zeros(shp, device=p.device, dtype=p.dtype)),
                    )

    def reset_parameters(self) -> None:
        """Initialise every parameter again as at construction, in place (an optimizer that
        holds them keeps them): each cell's rule (:meth:`RecurrentCell.init_parameter
        <carousel.cells.RecurrentCell.init_parameter>`, torch.nn's uniform default for the
        built-in cells) and zeros for learned initial states. A custom cell without
        ``reset_parameters`` is left as it is."""
        if self._torch_names:
            for k, cell in enumerate(self._cells):
                for n in self._param_names[k]:
                    for leaf in self._leaf_parameters(self._key(k, n)):
                        cell.init_parameter(n, leaf)
        else:
            for cell in self.cells:
                reset = getattr(cell, "reset_parameters", None)
                if callable(reset):
                    reset()
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if name.startswith("initial_"):
                    p.zero_()

    # ---------------------------------------------------------------- names
    def _suffix(self, k: int) -> str:
        D = 2 if self.bidirectional else 1
        layer, direction = divmod(k, D)
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _key(self, k: int, name: str) -> str:
        return name + self._suffix(k)

    def _initial_key(self, k: int, field: str) -> str:
        return f"initial_{field}" + self._suffix(k)

    def cell(self, layer: int = 0, direction: int = 0) -> Any:
        """The cell of a layer and direction (0 forward, 1 reverse)."""
        D = 2 if self.bidirectional else 1
        cells = self._cells if self._torch_names else self.cells
        return cells[layer * D + direction]

    def _all_cells(self) -> list[Any]:
        return list(self._cells if self._torch_names else self.cells)

    def _params(self, k: int) -> dict[str, Tensor] | None:
        names = self._param_names[k]
        if not names:
            return None
        if self._torch_names:
            suffix = self._suffix(k)
            return {n: self._own_weight(n + suffix) for n in names}
        cell = self.cells[k]
        return {n: getattr(cell, n) for n in names}

    def _own_weight(self, key: str) -> Tensor:
        """The layer's weight ``key`` (torch.nn's name) as the forward pass uses it: the
        registered parameter, or, when it is not one, the attribute that stands for it, as
        ``torch.nn``'s layers read it: a parametrization's value
        (``torch.nn.utils.parametrizations.weight_norm``), a pruned weight
        (``torch.nn.utils.prune``), or a tensor set in its place (weight drop)."""
        w = self._parameters.get(key)
        return w if w is not None else cast(Tensor, getattr(self, key))

    def _leaf_parameters(self, key: str) -> list[Tensor]:
        """The trained tensors behind the weight ``key``: the parameter itself, a
        parametrization's originals, or a pruned weight's ``<key>_orig`` (what
        :meth:`reset_parameters` initialises, as ``torch.nn``'s layers initialise every
        parameter)."""
        w = self._parameters.get(key)
        if w is not None:
            return [w]
        if parametrize.is_parametrized(self, key):
            plists = cast(nn.ModuleDict, self.parametrizations)
            return list(plists[key].parameters(recurse=False))
        orig = self._parameters.get(key + "_orig")
        return [orig] if orig is not None else []

    def _weight(self) -> Tensor:
        # a parameter of the layer, for its dtype and device (the layer's own first, cheaply)
        for p in self._parameters.values():
            if p is not None:
                return p
        return next(self.parameters())

    # ---------------------------------------------------------------- paths
    def _fused_supported(self) -> bool:
        """Whether torch's native kernel computes this layer (subclasses say)."""
        return False

    def _bptt_supported(self) -> bool:
        from carousel import bptt

        return all(bptt.supports(c) for c in self._all_cells())

    def _fused_preferred(self, device: torch.device) -> bool:
        """Whether the native kernel is the faster path on ``device`` (subclasses say)."""
        return True

    def _compiled_preferred(self, device: torch.device) -> bool:
        """Whether every cell has a compiled kernel on ``device`` and it is built (builds it
        once on first call; see :mod:`carousel.kernels`)."""
        from carousel import kernels

        # whether a kernel covers the cells depends only on their configuration: cache it
        cache = self.__dict__.setdefault("_kernel_cover", {})
        covered = cache.get(device.type)
        if covered is None:
            covered = cache[device.type] = all(
                kernels.supports(c, device) for c in self._all_cells()
            )
        return covered and kernels.available()

    def resolve_impl(
        self,
        *,
        return_states: bool = False,
        return_gates: bool = False,
        device: torch.device | str | None = None,
        steps: int | None = None,
        lengths: bool = False,
    ) -> str:
        """The path ``forward`` takes for these options.

        ``"auto"`` takes ``"reference"`` under torch.func transforms (``jvp``, ``vmap``, ...),
        which the hand-written and native backward passes do not support, and while
        ``torch.export`` traces the model (a graph of torch operations); else the native
        kernel where the configuration is standard, no trace is requested and the native kernel
        is faster on this device (measured: LSTM on CPU and GPU; GRU and RNN on GPU only);
        else the compiled kernel (:mod:`carousel.kernels`) where it covers every cell and is
        available (CPU); else the hand-written BPTT for built-in cells; else the reference
        loop. ``"compiled"`` runs the compiled kernel where it covers a cell and is available,
        and the hand-written BPTT ``"bptt"`` otherwise; ``"bptt"`` is always the pure-PyTorch
        path. Two exceptions for speed on the CPU, where the hand-written paths beat torch's
        LSTM kernel: a single step (``steps=1``) with gradients off (generation) takes the
        compiled kernel, since oneDNN's per-call set-up costs more than the step; and variable
        ``lengths`` take the compiled kernel (or, without one, the hand-written BPTT when
        gradients are on), since torch then runs a packed sequence off oneDNN (training 3-7x
        slower than the compiled kernel; docs/performance.md).

        Raises:
            ValueError: if an explicit ``impl`` cannot compute this configuration, or is
                ``"bptt"``/``"compiled"`` inside a torch.func transform or ``torch.export``.
        """
        name = type(self).__name__
        want_trace = return_states or return_gates
        device = torch.device(device) if device is not None else self._weight().device
        if self.impl == "auto":
            if _has_functorch_transform() or _exporting():
                return "reference"
            if not want_trace and self._fused_supported() and self._fused_preferred(device):
                if device.type == "cpu" and self._bptt_supported():
                    grad = torch.is_grad_enabled()
                    if (steps == 1 and not grad) or lengths:
                        if self._compiled_preferred(device):
                            return "compiled"
                        if lengths and grad:
                            return "bptt"
                return "fused"
            if self._bptt_supported():
                return "compiled" if self._compiled_preferred(device) else "bptt"
            return "reference"
        if self.impl == "fused":
            if not self._fused_supported():
                raise ValueError(
                    f"{name}: impl='fused' needs a configuration torch's native kernel computes "
                    "(standard LSTM/GRU/RNN cells); this layer has "
                    f"{self.cell().extra_repr()}; use impl='bptt' or 'auto'"
                )
            if want_trace:
                raise ValueError(
                    f"{name}: impl='fused' cannot return per-step states or gates; use "
                    "impl='bptt' or 'auto' with return_states/return_gates"
                )
        if self.impl in ("bptt", "compiled") and not self._bptt_supported():
            raise ValueError(
                f"{name}: impl={self.impl!r} has no hand-written backward for "
                f"{type(self.cell()).__name__}; use impl='reference' or 'auto'"
            )
        if self.impl in ("bptt", "compiled") and _has_functorch_transform():
            raise ValueError(
                f"{name}: impl={self.impl!r} cannot run inside a torch.func transform (grad, "
                "vmap, jvp, ...): its backward pass is hand-written; use impl='auto' (which "
                "takes 'reference' there) or 'reference'"
            )
        if self.impl in ("bptt", "compiled") and _exporting():
            raise ValueError(
                f"{name}: impl={self.impl!r} cannot be exported (torch.export traces torch "
                "operations; this path runs its own loop and kernels); use impl='auto' (which "
                "takes 'reference' there) or 'reference'"
            )
        return self.impl

    def _runner(self, impl: str) -> _Runner:
        if impl == "compiled":
            from carousel import kernels

            return kernels.run_sequence
        if impl == "bptt":
            from carousel import bptt

            return bptt.run_sequence
        return run_reference

    # ---------------------------------------------------------------- checks
    def _check_input(self, x: Tensor, packed: PackedSequence | None = None) -> None:
        """``x``: the input, or the padded time-major form of ``packed``."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{name}: input must be a Tensor or PackedSequence, got {type(x).__name__}"
            )
        I = self.cell().input_size
        if packed is not None and (x.dim() != 3 or x.shape[-1] != I):
            raise ValueError(
                f"{name}: expected a PackedSequence of {I} features (data of shape (N, {I})), "
                f"got data of shape {shape_str(tuple(packed.data.shape))}"
            )
        expect = "(B, T, " if self.batch_first else "(T, B, "
        if packed is None and (x.dim() != 3 or x.shape[-1] != I):
            raise ValueError(
                f"{name}: expected input of shape {expect}{I}) with batch_first="
                f"{self.batch_first} (or unbatched (T, {I})), got {shape_str(tuple(x.shape))}"
            )
        if packed is None and x.shape[1 if self.batch_first else 0] == 0:
            raise ValueError(f"{name}: input has no time steps (T=0): {shape_str(x.shape)}")
        w = self._weight()
        mixed = x.is_floating_point() and autocast_on(x.device.type)  # as torch.nn admits
        if not x.is_floating_point() or (x.dtype != w.dtype and not mixed):
            raise TypeError(
                f"{name}: input has dtype {x.dtype} but the parameters are {w.dtype}; "
                f"convert one of them (e.g. input.to({w.dtype}) or layer.to({x.dtype}))"
            )
        if x.device != w.device:
            raise ValueError(f"{name}: input is on {x.device} but the parameters are on {w.device}")

    def _check_lengths(self, lengths: Any, T: int, B: int, device: torch.device | str) -> Tensor:
        name = type(self).__name__
        if not isinstance(lengths, Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"{name}: lengths must be a 1-D integer tensor of size B={B}, "
                    f"got {type(lengths).__name__}"
                ) from None
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"{name}: lengths must have an integer dtype, got {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(
                f"{name}: expected lengths of shape ({B},) (one per sequence), "
                f"got {shape_str(tuple(lengths.shape))}"
            )
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(
                f"{name}: lengths must lie in [1, T={T}], got values from {lo} to {hi}"
            )
        return lengths.to(device=device, dtype=torch.long)

    def _initial_states(self, hx: Any, B: int, x: Tensor) -> list[Any]:
        """One state per layer and direction, fields ``(B, *)``."""
        name = type(self).__name__
        n = len(self._state_spec)
        if hx is None:
            states = []
            for k, (stype, fields, shapes) in enumerate(self._state_spec):
                if self.learn_initial_state:
                    ts = [
                        getattr(self, self._initial_key(k, f)).expand(B, *shp)
                        for f, shp in zip(fields, shapes)
                    ]
                else:
                    ts = [x.new_zeros(B, *shp) for shp in shapes]
                states.append(ts[0] if stype is Tensor or issubclass(stype, Tensor) else stype(*ts))
            return states
        stype, fields, _ = self._state_spec[0]
        tensor_state = stype is Tensor or issubclass(stype, Tensor)
        given = (hx,) if isinstance(hx, Tensor) else hx
        if not isinstance(given, (tuple, list)) or len(given) != len(fields):
            want = "a Tensor h_0" if tensor_state else f"a tuple {fields} of {len(fields)} tensors"
            got = type(hx).__name__
            if isinstance(given, (tuple, list)) and not isinstance(hx, Tensor):
                got = f"a {got} of {len(given)}"
            raise TypeError(f"{name}: hx must be {want}, got {got}")
        for f, t, shp in zip(fields, given, self._state_spec[0][2]):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: hx.{f} must be a Tensor, got {type(t).__name__}")
            want_shape = (n, B, *shp)
            if tuple(t.shape) != want_shape:
                raise ValueError(
                    f"{name}: expected hx.{f} of shape {shape_str(want_shape)} "
                    f"(num_layers*num_directions, B, ...), got {shape_str(tuple(t.shape))}"
                )
            if t.dtype != x.dtype and not (t.is_floating_point() and autocast_on(x.device.type)):
                raise TypeError(f"{name}: hx.{f} has dtype {t.dtype}, input has {x.dtype}")
        states = []
        for k in range(n):
            ts = [t[k] for t in given]
            states.append(ts[0] if tensor_state else self._state_spec[k][0](*ts))
        return states

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Any = None,
        *,
        lengths: Tensor | Sequence[int] | None = None,
        return_states: bool = False,
        return_gates: bool = False,
    ) -> RecurrentOutput:
        """Run the layer over whole sequences.

        Args:
            input: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), an unbatched ``(T, I)``,
                or a ``PackedSequence``.
            hx: initial state, fields ``(L*D, B, *)`` (``h_0`` for RNN/GRU, ``(h_0, c_0)`` for
                LSTM). Default: the learned initial state if ``learn_initial_state``, else
                zeros.
            lengths: ``(B,)`` integer lengths, each in ``[1, T]``. Steps past a sequence's end
                leave its state unchanged, so the final state is the state at
                ``lengths - 1``, and their outputs are zero (as ``pad_packed_sequence``
                gives); the reverse direction starts at each sequence's own end.
            return_states: also return every state of every step (``result.states``).
            return_gates: also return every gate activation (``result.gates``).

        Returns:
            :class:`RecurrentOutput` ``(output, state)`` with ``states`` and ``gates``.

        Raises:
            ValueError: wrong shapes, lengths out of range, or an ``impl`` that cannot compute
                this configuration.
            TypeError: wrong types or dtypes.
        """
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            packed = True
            if lengths is not None:
                raise ValueError(f"{name}: a PackedSequence carries its lengths; pass lengths=None")
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            x, lengths = pad_packed_sequence(input, batch_first=False)
            batch_first = False
        else:
            packed = False
            x = input
            batch_first = self.batch_first
        unbatched = not packed and isinstance(x, Tensor) and x.dim() == 2
        if unbatched:
            if lengths is not None:
                raise ValueError(f"{name}: lengths needs batched input (3-D), got 2-D input")
            x = x.unsqueeze(1 if not batch_first else 0)
            if hx is not None:
                hx = tuple(t.unsqueeze(1) for t in ((hx,) if isinstance(hx, Tensor) else hx))
                hx = hx[0] if len(hx) == 1 else hx
        self._check_input(x, input if isinstance(input, PackedSequence) else None)
        if batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        if lengths is not None:
            lengths = self._check_lengths(lengths, T, B, x.device)
        states0 = self._initial_states(hx, B, x)
        impl = self.resolve_impl(
            return_states=return_states,
            return_gates=return_gates,
            device=x.device,
            steps=T,
            lengths=lengths is not None,
        )
        if impl == "fused":
            # under autocast, torch's kernel follows autocast's policy, as in torch.nn's layers
            output, final = self._fused_forward(x, states0, lengths)
            seq_states = seq_gates = None
        else:
            precision: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if autocast_on(x.device.type):
                # carousel's own paths run the recurrence in the parameters' dtype under
                # autocast (autocast off inside, as torch.amp.custom_fwd(cast_inputs=...) does):
                # a hand-written backward is written for one dtype, and the state carried over
                # many steps keeps its precision
                dtype = self._weight().dtype
                x = x.to(dtype)
                states0 = [map_state(lambda t: t.to(dtype), s) for s in states0]
                precision = torch.autocast(x.device.type, enabled=False)
            with precision:
                output, final, seq_states, seq_gates = self._unrolled_forward(
                    x, states0, lengths, impl, return_states, return_gates
                )
        if batch_first:
            output = output.transpose(0, 1)
            if seq_states is not None:
                seq_states = map_state(lambda t: t.transpose(1, 2), seq_states)
            if seq_gates is not None:
                seq_gates = {k: v.transpose(1, 2) for k, v in seq_gates.items()}
        if unbatched:  # never packed: a PackedSequence comes with lengths
            output = output.squeeze(1 if not batch_first else 0)
            final = map_state(lambda t: t.squeeze(1), final)
            if seq_states is not None:
                seq_states = map_state(lambda t: t.squeeze(2), seq_states)
            if seq_gates is not None:
                seq_gates = {k: v.squeeze(2) for k, v in seq_gates.items()}
        result_output: Tensor | PackedSequence = output
        if packed:
            assert lengths is not None  # the PackedSequence's, set above
            result_output = _repack(output, lengths, sorted_indices, unsorted_indices)
        result = RecurrentOutput(result_output, final)
        result.states = seq_states
        result.gates = seq_gates
        return result

    def _unrolled_forward(
        self,
        x: Tensor,
        states0: list[Any],
        lengths: Tensor | None,
        impl: str,
        return_states: bool,
        return_gates: bool,
    ) -> tuple[Tensor, Any, Any | None, dict[str, Tensor] | None]:
        T = x.shape[0]
        D = 2 if self.bidirectional else 1
        run = self._runner(impl)
        mask = rev = None
        if lengths is not None:
            steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
            mask = steps < lengths.unsqueeze(0)  # (T, B)
            if D == 2:
                # index that reverses each sequence within its own length
                rev = torch.where(mask, lengths.unsqueeze(0) - 1 - steps, steps)  # (T, B)
        cells = self._all_cells()
        finals: list[Any] = []
        all_states: list[Any] = []
        all_gates: list[dict[str, Tensor]] = []  # with return_gates (then every run's)
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                inp = layer_input if d == 0 else _reverse(layer_input, rev)
                res: SequenceResult = run(
                    cells[k], self._params(k), inp, states0[k], mask,
                    return_states=return_states, return_gates=return_gates,
                )  # fmt: skip
                out, seq_states, seq_gates = res.output, res.states, res.gates
                if d == 1:
                    out = _reverse(out, rev)
                    if seq_states is not None:
                        seq_states = map_state(lambda t: _reverse(t, rev), seq_states)
                    if seq_gates is not None:
                        seq_gates = {g: _reverse(v, rev) for g, v in seq_gates.items()}
                outs.append(out)
                finals.append(res.state)
                all_states.append(seq_states)
                if seq_gates is not None:
                    all_gates.append(seq_gates)
            layer_input = outs[0] if D == 1 else torch.cat(outs, dim=-1)  # (T, B, D*O)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        final = map_state(lambda *fs: torch.stack(fs), *finals)  # fields (L*D, B, *)
        seq_states = map_state(lambda *fs: torch.stack(fs), *all_states) if return_states else None
        seq_gates = None
        if return_gates:
            names = all_gates[0].keys()
            seq_gates = {g: torch.stack([gs[g] for gs in all_gates]) for g in names}
        return layer_input, final, seq_states, seq_gates

    def _fused_forward(
        self, x: Tensor, states0: list[Any], lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        raise NotImplementedError  # only called when _fused_supported() is True

    def extra_repr(self) -> str:
        parts = []
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.learn_initial_state:
            parts.append("learn_initial_state=True")
        if self.impl != "auto":
            parts.append(f"impl={self.impl!r}")
        return ", ".join(parts)


def _reverse(z: Tensor, rev: Tensor | None) -> Tensor:
    """Reverse ``z`` (``(T, B, *)``) in time, each sequence within its own length."""
    if rev is None:
        return z.flip(0)
    idx = rev.view(*rev.shape, *([1] * (z.dim() - 2))).expand_as(z)
    return z.gather(0, idx)


def _repack(
    output: Tensor,
    lengths: Tensor,
    sorted_indices: Tensor | None,
    unsorted_indices: Tensor | None,
) -> PackedSequence:
    """Pack a padded time-major ``output`` like the PackedSequence it came from."""
    out = output if sorted_indices is None else output.index_select(1, sorted_indices)
    lens = lengths.cpu() if sorted_indices is None else lengths.cpu()[sorted_indices.cpu()]
    p = pack_padded_sequence(out, lens, enforce_sorted=True)
    return PackedSequence(p.data, p.batch_sizes, sorted_indices, unsorted_indices)


class Recurrent(RecurrentBase):
    """Any cell over whole sequences: stacked, bidirectional, variable-length, with learned
    initial states and per-step traces.

    Args:
        cells: one cell (one layer, one direction), or a sequence with one entry per layer,
            each a cell or, with ``bidirectional=True``, a pair ``(forward_cell,
            reverse_cell)``. Layer ``l+1``'s cells must take ``D * output_size`` inputs, and
            every cell must have the same state (fields and sizes: the states are stacked
            over layers and directions); chain ``Recurrent`` layers to stack other cells.
        bidirectional: run a second cell per layer from each sequence's end to its start and
            concatenate the two outputs.
        batch_first: input and output are ``(B, T, *)`` instead of ``(T, B, *)``.
        dropout: dropout on the outputs of each layer but the last, in training mode.
        learn_initial_state: the initial state is a parameter per layer and direction
            (``initial_{field}_l{k}[_reverse]``, zeros at first), trained by backpropagating
            through time to the first step (Hinton, lecture 7b).
        impl: ``"auto"``, ``"compiled"``, ``"bptt"`` (built-in cells) or ``"reference"``; see
            :meth:`RecurrentBase.resolve_impl`.

    The cells must follow the contract of :class:`~carousel.cells.Cell`. Parameters keep the
    cells' names under ``cells.{k}.`` with ``k = layer * D + direction``.

    Shape:
        - input: ``(T, B, I)``; output ``(T, B, D*O)``; state fields ``(L*D, B, *)``.

    Example:
        >>> import torch, carousel
        >>> layer = carousel.Recurrent([carousel.LSTMCell(3, 5, variant="CIFG")])
        >>> out, (h, c) = layer(torch.randn(7, 2, 3))
        >>> tuple(out.shape), tuple(h.shape)
        ((7, 2, 5), (1, 2, 5))
    """

    def __init__(
        self,
        cells: Any,
        *,
        bidirectional: bool = False,
        batch_first: bool = False,
        dropout: float = 0.0,
        learn_initial_state: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(cells, nn.Module):
            cells = [cells]
        if not isinstance(cells, (list, tuple)) or not cells:
            raise TypeError(
                "Recurrent: cells must be a cell or a non-empty list of cells (one per layer), "
                f"got {type(cells).__name__}"
            )
        flat: list[Any] = []
        for l, entry in enumerate(cells):
            group = list(entry) if isinstance(entry, (list, tuple)) else [entry]
            if len(group) != (2 if bidirectional else 1):
                want = "a pair (forward_cell, reverse_cell)" if bidirectional else "one cell"
                raise ValueError(f"Recurrent: layer {l} must be {want}, got {len(group)} cells")
            for c in group:
                for attr in ("input_size", "hidden_size", "initial_state"):
                    if not hasattr(c, attr):
                        raise TypeError(
                            f"Recurrent: layer {l}'s cell {type(c).__name__} lacks '{attr}' "
                            "(see carousel.cells.Cell for the contract)"
                        )
            flat.extend(group)
        D = 2 if bidirectional else 1
        for l in range(1, len(cells)):
            width = D * _output_size(flat[(l - 1) * D])
            for c in flat[l * D : (l + 1) * D]:
                if c.input_size != width:
                    raise ValueError(
                        f"Recurrent: layer {l}'s cell takes input_size={c.input_size}, "
                        f"but layer {l - 1} outputs {width}"
                    )
        check_positive_int("Recurrent", "num_layers", len(cells))
        self._setup(
            flat, num_layers=len(cells), bidirectional=bidirectional, batch_first=batch_first,
            dropout=dropout, learn_initial_state=learn_initial_state, impl=impl,
            torch_names=False,
        )  # fmt: skip
        if self.impl == "fused":
            raise ValueError("Recurrent: impl='fused' is for carousel.LSTM/GRU/RNN; use 'auto'")
        # the states of all layers and directions are stacked into fields (L*D, B, *)
        first = self._state_spec[0]
        for k, spec in enumerate(self._state_spec[1:], start=1):
            if spec != first:
                layer, direction = divmod(k, D)
                raise ValueError(
                    "Recurrent: every cell must have the same state (its fields and sizes are "
                    "stacked over layers and directions); "
                    f"layer 0's is {_spec_str(first)}, layer {layer}"
                    f"{' (reverse)' if direction else ''}'s is {_spec_str(spec)}; chain "
                    "Recurrent layers to stack cells with different states"
                )


def _spec_str(spec: tuple[Any, tuple[str, ...], list[tuple[int, ...]]]) -> str:
    """``"LSTMState(h (8), c (8))"``: a state's type, fields and per-sequence shapes."""
    stype, fields, shapes = spec
    inner = ", ".join(f"{f} {shape_str(s)}" for f, s in zip(fields, shapes))
    return f"{stype.__name__}({inner})"


def _output_size(cell: Any) -> int:
    return getattr(cell, "output_size", cell.hidden_size)
