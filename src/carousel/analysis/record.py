"""Recording what happens inside carousel's recurrent layers during one forward pass of any model.

Every measure of :mod:`carousel.analysis` starts here: :func:`record` runs a model (a bare layer
or any ``nn.Module`` that contains carousel layers) once on the plain autograd path
(``impl="reference"``) and captures, for every layer and direction, the input, state and gate
activations of every time step. The captured per-step states stay attached to the autograd
graph, so ``dL/dh_t`` is simply ``torch.autograd.grad(L, h_t)`` (see
:mod:`carousel.analysis.gradients`), and each step can be re-run from its recorded input and
previous state to form the Jacobians ``ds_t/ds_{t-1}`` (:mod:`carousel.analysis.dynamics`).

Conventions used by all of :mod:`carousel.analysis`:

- A *track* is one layer and direction of one carousel layer in the model, named like the
  parameters' suffixes: ``"l0"``, ``"l1_reverse"`` for a bare layer, ``"encoder.l0"`` for a layer
  that the model holds as ``model.encoder``.
- Per-step tensors are **time-major**, ``(T, B, *)``, in time order (also for reverse
  directions and ``batch_first`` layers); an unbatched input gives ``B = 1``.
- Past a sequence's end (``lengths``) recorded states and gates are zero.
- If the model calls a layer several times in one forward pass (a decoder stepping one token at
  a time), the calls are concatenated along time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from carousel.layers.recurrent import RecurrentBase, RecurrentOutput
from carousel.layers.sequence import state_fields

__all__ = [
    "LayerRecord",
    "Recording",
    "find_layers",
    "record",
    "reference_path",
    "run_model",
    "traces",
]


@dataclass
class LayerRecord:
    """Per-step tensors of one recurrent layer and direction (a *track*).

    Attributes:
        name: the track's name, e.g. ``"l0"`` or ``"rnn.l1_reverse"``.
        module_name: name of the carousel layer inside the model (``""`` for the model itself).
        layer: layer index ``l``.
        direction: 0 forward, 1 reverse.
        field_names: names of the state's fields, ``("h",)`` or ``("h", "c")`` (LSTM).
        inputs: ``(T, B, I)`` the layer's input at each step (detached).
        states: field -> ``(T, B, *)``, the state after each step (detached; zero past a
            sequence's end).
        gates: gate name -> ``(T, B, H)`` activations (detached; empty for cells without gates).
        initial_state: field -> ``(B, *)``, the state before the first step the cell processed
            (the first time step, or the last one for a reverse direction).
        mask: ``(T, B)`` bool, True at valid steps, or ``None`` when every step is valid.
        order: ``(T, B)`` long: processing step ``j`` of sequence ``b`` is time
            ``order[j, b]``; ``None`` for a forward direction (identity).
        previous: ``(T, B, S)``: the flat state (fields concatenated) the cell received at each
            step, in processing order (detached): the point each step's Jacobian is taken at.
        step: the cell's step with its weights, ``step(x, state) -> (y, new_state, gates)``
            with ``x`` of shape ``(N, I)``; used to re-run steps for Jacobians.
        state_type: the state's type (``Tensor`` or the cell's NamedTuple), to rebuild states.
    """

    name: str
    module_name: str
    layer: int
    direction: int
    field_names: tuple[str, ...]
    inputs: Tensor
    states: dict[str, Tensor]
    gates: dict[str, Tensor]
    initial_state: dict[str, Tensor]
    mask: Tensor | None
    order: Tensor | None
    previous: Tensor = field(repr=False)
    step: Callable[[Tensor, Any], tuple[Tensor, Any, dict[str, Tensor]]] = field(repr=False)
    state_type: Any = field(repr=False)

    @property
    def num_steps(self) -> int:
        """``T``."""
        return self.inputs.shape[0]

    @property
    def state_size(self) -> int:
        """``S``: the total size of the state (all fields concatenated, e.g. ``2H`` for LSTM)."""
        return sum(v.shape[-1] for v in self.states.values())

    def processing_order(self, z: Tensor) -> Tensor:
        """Reorder a time-ordered ``(T, B, *)`` tensor into the order the cell processed it."""
        return _apply_order(z, self.order)

    def make_state(self, flat: Tensor) -> Any:
        """Split a flat ``(N, S)`` tensor into this track's state type (fields in order)."""
        sizes = [self.states[f].shape[-1] for f in self.field_names]
        parts = flat.split(sizes, dim=-1)
        if self.state_type is Tensor:
            return parts[0]
        return self.state_type(*parts)

    def flat_state(self, state: Any) -> Tensor:
        """Concatenate the fields of a state into one ``(N, S)`` tensor."""
        return torch.cat(state_fields(state), dim=-1)


@dataclass
class Recording:
    """What :func:`record` returns.

    Attributes:
        output: the model's output (attached to the graph).
        layers: track name -> :class:`LayerRecord`, in the order the model ran them.
        graph_states: track name -> field -> list of the per-step state tensors still attached
            to the graph, in the order the cell processed them (reorder with
            :meth:`LayerRecord.processing_order`, an involution), for ``torch.autograd.grad``.
    """

    output: Any
    layers: dict[str, LayerRecord]
    graph_states: dict[str, dict[str, list[Tensor]]] = field(repr=False)


def find_layers(model: nn.Module) -> list[tuple[str, RecurrentBase]]:
    """The carousel recurrent layers inside ``model`` (itself included), with their names.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if it holds no carousel layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"analysis: model must be a torch.nn.Module, got {type(model).__name__}")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, RecurrentBase)]
    if not found:
        raise ValueError(
            f"analysis: {type(model).__name__} holds no carousel recurrent layer "
            "(carousel.RNN/LSTM/GRU/Recurrent); torch.nn.LSTM/GRU/RNN weights load into their "
            "carousel namesakes with load_state_dict"
        )
    return found


@contextlib.contextmanager
def reference_path(model: nn.Module) -> Iterator[None]:
    """Run every carousel layer in ``model`` on the plain autograd path while inside.

    The reference path records every step, works under ``torch.func`` transforms and
    backpropagates in evaluation mode on every device (cuDNN's fused RNN backward refuses to
    run in evaluation mode); cuDNN is disabled too for any ``torch.nn`` recurrent module the
    model may hold. The previous ``impl`` of each layer is restored on exit.
    """
    layers = [m for m in model.modules() if isinstance(m, RecurrentBase)]
    saved = [m.impl for m in layers]
    try:
        for m in layers:
            m.impl = "reference"
        with torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        for m, impl in zip(layers, saved):
            m.impl = impl


def primary_output(output: Any, owner: str, fix: str) -> tuple[Tensor, bool]:
    """The tensor of a model's output that a default loss or score reads, and whether it is
    time-major because it came packed: the output itself, or the first element of an
    ``(output, state)`` tuple; a :class:`PackedSequence` (itself a tuple) is padded.

    Raises:
        TypeError: for anything else, with ``owner`` and the ``fix`` in the message.
    """
    if isinstance(output, tuple) and not isinstance(output, PackedSequence):
        output = output[0]
    if isinstance(output, PackedSequence):
        return pad_packed_sequence(output)[0], True
    if not isinstance(output, Tensor):
        raise TypeError(f"{owner}: the model's output is a {type(output).__name__}; {fix}")
    return output, False


def run_model(model: nn.Module, inputs: Any, forward_kwargs: dict | None = None) -> Any:
    """Call ``model`` on ``inputs`` (a tensor or a :class:`PackedSequence`, or a tuple of
    positional arguments)."""
    args = (
        inputs
        if isinstance(inputs, tuple) and not isinstance(inputs, PackedSequence)
        else (inputs,)
    )
    return model(*args, **(forward_kwargs or {}))


def _apply_order(z: Tensor, order: Tensor | None) -> Tensor:
    if order is None:
        return z
    idx = order.view(*order.shape, *([1] * (z.dim() - 2))).expand_as(z)
    return z.gather(0, idx)


def _step_method(layer: RecurrentBase, k: int, cell: Any) -> str:
    """Which method of ``cell`` the reference runner calls (see ``run_reference``)."""
    if layer._params(k) is not None:
        return "step_with_params"
    if hasattr(cell, "step_with_gates"):
        return "step_with_gates"
    return "forward"


class _Call:
    """Steps captured during one call of one layer: per cell index, a list of steps."""

    def __init__(self, n_cells: int, lengths: Tensor | None, batch_first: bool) -> None:
        self.lengths = lengths
        self.batch_first = batch_first
        # per cell: list of (x, prev_state, new_state, gates)
        self.steps: list[list[tuple[Tensor, Any, Any, dict[str, Tensor]]]] = [
            [] for _ in range(n_cells)
        ]
        self.step_fns: list[Callable | None] = [None] * n_cells


class _Recorder:
    def __init__(self, model: nn.Module) -> None:
        self.layers = find_layers(model)
        self.calls: dict[str, list[_Call]] = {name: [] for name, _ in self.layers}
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> _Recorder:
        try:
            for name, layer in self.layers:
                self._wrap_layer(name, layer)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, obj: Any, attr: str, new: Any) -> None:
        had = attr in vars(obj)
        old = vars(obj).get(attr)
        setattr(obj, attr, new)

        def undo() -> None:
            if had:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)

        self._undo.append(undo)

    def _wrap_layer(self, name: str, layer: RecurrentBase) -> None:
        cells = layer._all_cells()
        calls = self.calls[name]
        original_forward = layer.forward

        def forward(
            input: Tensor | PackedSequence,
            hx: Any = None,
            *,
            lengths: Tensor | Sequence[int] | None = None,
            **kw: Any,
        ) -> RecurrentOutput:
            lens = lengths
            if isinstance(input, PackedSequence):
                _, lens = pad_packed_sequence(input)
            if lens is not None:
                lens = torch.as_tensor(lens).to(torch.long).cpu()
            calls.append(_Call(len(cells), lens, layer.batch_first))
            return original_forward(input, hx, lengths=lengths, **kw)

        self._patch(layer, "forward", forward)
        for k, cell in enumerate(cells):
            self._wrap_cell(calls, k, cell, _step_method(layer, k, cell))

    def _wrap_cell(self, calls: list[_Call], k: int, cell: Any, method: str) -> None:
        original = getattr(cell, method)

        if method == "step_with_params":

            def with_params(
                params: dict[str, Tensor], x: Tensor, state: Any
            ) -> tuple[Tensor, Any, dict[str, Tensor]]:
                y, new, gates = original(params, x, state)
                call = calls[-1]
                if call.step_fns[k] is None:
                    call.step_fns[k] = lambda x_, s_, p=params: original(p, x_, s_)
                call.steps[k].append((x, state, new, gates))
                return y, new, gates

            self._patch(cell, method, with_params)
        elif method == "step_with_gates":

            def with_gates(x: Tensor, state: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
                y, new, gates = original(x, state)
                call = calls[-1]
                if call.step_fns[k] is None:
                    call.step_fns[k] = original
                call.steps[k].append((x, state, new, gates))
                return y, new, gates

            self._patch(cell, method, with_gates)
        else:

            def plain_step(x: Tensor, state: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
                y, new = original(x, state)
                return y, new, {}

            def plain(x: Tensor, state: Any) -> tuple[Tensor, Any]:
                y, new = original(x, state)
                call = calls[-1]
                if call.step_fns[k] is None:
                    call.step_fns[k] = plain_step
                call.steps[k].append((x, state, new, {}))
                return y, new

            self._patch(cell, method, plain)


def _track_name(module_name: str, layer: int, direction: int) -> str:
    base = f"l{layer}" + ("_reverse" if direction else "")
    return f"{module_name}.{base}" if module_name else base


def _reverse_order(T: int, lengths: Tensor | None, B: int, device: torch.device) -> Tensor:
    steps = torch.arange(T, device=device).unsqueeze(1)  # (T, 1)
    if lengths is None:
        return (T - 1 - steps).expand(T, B).contiguous()
    lens = lengths.to(device).unsqueeze(0)  # (1, B)
    return torch.where(steps < lens, lens - 1 - steps, steps.expand(T, B))


def _assemble(recorder: _Recorder) -> tuple[dict[str, LayerRecord], dict]:
    """Turn the captured steps into time-ordered tensors, one :class:`LayerRecord` per track."""
    layers: dict[str, LayerRecord] = {}
    graph: dict[str, dict[str, list[Tensor]]] = {}
    for module_name, layer in recorder.layers:
        calls = [c for c in recorder.calls[module_name] if any(c.steps)]
        D = 2 if layer.bidirectional else 1
        for k in range(len(layer._all_cells())):
            l, d = divmod(k, D)
            name = _track_name(module_name, l, d)
            pieces = []
            for call in calls:
                steps = call.steps[k]
                if not steps:
                    continue
                pieces.append(_assemble_call(call, k, d, steps))
            if not pieces:
                continue
            first = pieces[0]
            offsets = [0]
            for p in pieces:
                offsets.append(offsets[-1] + p["T"])
            order = None
            if d == 1:
                order = torch.cat([p["order"] + o for p, o in zip(pieces, offsets)], dim=0)
            masks = [p["mask"] for p in pieces]
            mask = None
            if any(m is not None for m in masks):
                mask = torch.cat(
                    [
                        m if m is not None else torch.ones(p["T"], p["B"], dtype=torch.bool)
                        for m, p in zip(masks, pieces)
                    ]
                )
            layers[name] = LayerRecord(
                name=name,
                module_name=module_name,
                layer=l,
                direction=d,
                field_names=first["fields"],
                inputs=torch.cat([p["inputs"] for p in pieces]),
                states={f: torch.cat([p["states"][f] for p in pieces]) for f in first["fields"]},
                gates={g: torch.cat([p["gates"][g] for p in pieces]) for g in first["gates"]},
                initial_state=first["initial"],
                mask=mask,
                order=order,
                previous=torch.cat([p["previous"] for p in pieces]),
                step=first["step"],
                state_type=first["state_type"],
            )
            graph[name] = {f: [t for p in pieces for t in p["graph"][f]] for f in first["fields"]}
    return layers, graph


def _assemble_call(call: _Call, k: int, direction: int, steps: list) -> dict[str, Any]:
    xs = [s[0] for s in steps]
    T, B = len(steps), xs[0].shape[0]
    device = xs[0].device
    prev0, new0 = steps[0][1], steps[0][2]
    fields = ("h",) if isinstance(new0, Tensor) else tuple(new0._fields)
    state_type = Tensor if isinstance(new0, Tensor) else type(new0)
    lengths = call.lengths
    mask = None
    if lengths is not None:
        mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B) processing order
    order = _reverse_order(T, lengths, B, device) if direction == 1 else None

    def to_time(z: Tensor) -> Tensor:  # processing order -> time order (an involution)
        return _apply_order(z, order)

    def masked(z: Tensor) -> Tensor:
        if mask is None:
            return z
        m = mask.to(z.device).view(T, B, *([1] * (z.dim() - 2)))
        return torch.where(m, z, torch.zeros_like(z))

    inputs = to_time(masked(torch.stack([x.detach() for x in xs])))
    states, graph = {}, {}
    for i, f in enumerate(fields):
        seq = [state_fields(s[2])[i] for s in steps]  # processing order, graph-attached
        states[f] = to_time(masked(torch.stack([t.detach() for t in seq])))
        graph[f] = seq  # processing order: LayerRecord.order maps it to time
    gates = {}
    if steps[0][3]:
        for g in steps[0][3]:
            gates[g] = to_time(masked(torch.stack([s[3][g].detach() for s in steps])))
    initial = {f: t.detach() for f, t in zip(fields, state_fields(prev0))}
    previous = torch.stack([torch.cat(state_fields(s[1]), -1).detach() for s in steps])
    return {
        "T": T,
        "B": B,
        "fields": fields,
        "state_type": state_type,
        "inputs": inputs,
        "states": states,
        "gates": gates,
        "graph": graph,
        "initial": initial,
        "mask": None if mask is None else to_time(mask.to(device)).cpu(),
        "order": order,
        "previous": previous,
        "step": call.step_fns[k],
    }


def record(
    model: nn.Module,
    inputs: Any,
    *,
    forward_kwargs: dict | None = None,
    grad: bool = True,
) -> Recording:
    """Run ``model`` once on the reference path and record every step of every carousel layer.

    Args:
        model: a carousel layer, or any module holding carousel layers (found with
            ``model.named_modules()``).
        inputs: the model's input: a tensor or PackedSequence, or a tuple of positional arguments.
        forward_kwargs: keyword arguments for the model's forward (e.g. ``lengths``).
        grad: build the autograd graph (needed for gradients; ``False`` for traces only).

    Returns:
        :class:`Recording` with the model's output and one :class:`LayerRecord` per track.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if it holds no carousel layer, or no layer ran.

    Shape:
        Per-step tensors are time-major ``(T, B, *)`` (see the module docstring).
    """
    with _Recorder(model) as rec, reference_path(model), torch.set_grad_enabled(grad):
        output = run_model(model, inputs, forward_kwargs)
    layers, graph = _assemble(rec)
    if not layers:
        raise ValueError(
            f"analysis: {type(model).__name__}'s forward ran none of its carousel layers "
            f"({', '.join(n or type(m).__name__ for n, m in rec.layers)})"
        )
    return Recording(output=output, layers=layers, graph_states=graph)


def traces(
    model: nn.Module, inputs: Any, *, forward_kwargs: dict | None = None
) -> dict[str, LayerRecord]:
    """Hidden states, memory cells and gate activations of every step, layer and direction.

    Args:
        model: a carousel layer or any module holding carousel layers.
        inputs: the model's input, a tensor or PackedSequence, or a tuple of positional
            arguments.
        forward_kwargs: keyword arguments for the model's forward (e.g. ``lengths``).

    Returns:
        track name -> :class:`LayerRecord`; ``.states["h"]``, ``.states["c"]`` (LSTM) and
        ``.gates[name]`` are ``(T, B, H)``, time-major, zero past a sequence's end. Draw them
        with :func:`carousel.analysis.plots.plot_traces`.

    Example:
        >>> import torch, carousel
        >>> from carousel.analysis import traces
        >>> tr = traces(carousel.LSTM(3, 8, num_layers=2), torch.randn(5, 2, 3))
        >>> list(tr), tuple(tr["l1"].gates["f"].shape)
        (['l0', 'l1'], (5, 2, 8))
    """
    return record(model, inputs, forward_kwargs=forward_kwargs, grad=False).layers
