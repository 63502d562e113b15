r"""Initialisation schemes for recurrent networks.

Tensor-level functions (in place, like ``torch.nn.init``, all randomness from an explicit
``generator``):

- :func:`orthogonal_`: a (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014), so every
  singular value of the linear recurrence is ``gain``;
- :func:`identity_`: ``scale * I``, the IRNN of Le et al. 2015 ("A simple way to initialize
  recurrent networks of rectified linear units"), with ReLU units and zero biases;
- :func:`echo_state_`: Gaussian weights (optionally sparse) rescaled to a given spectral radius,
  the echo-state-network style initialisation used with momentum by Sutskever et al. 2013 ("On
  the importance of initialization and momentum in deep learning", section 4, spectral radius
  1.1); :func:`scale_to_spectral_radius_` rescales any square matrix;
- :func:`sparse_`: ``nonzero`` Gaussian incoming weights per unit, the rest zero (Martens 2010,
  "Deep learning via Hessian-free optimization", section 5);
- :func:`uniform_` (``U(-scale, scale)``) and :func:`normal_` (``N(0, std^2)``).

Module-level functions walk a recurrent layer (``carousel.RNN/LSTM/GRU``, ``carousel.Recurrent``
or a ``torch.nn`` RNN) and apply a scheme to its recurrent weights (``weight_hh*``), input
weights (``weight_ih*``) and biases, each gate's ``(H, H)`` block separately for gated cells:
:func:`initialize_` and :func:`forget_gate_bias_`. Pass ``layers=`` to choose layers, or call
them on each layer of a model with different schemes.

Example:
    >>> import torch, carousel
    >>> rnn = carousel.RNN(2, 8, nonlinearity="relu")
    >>> _ = carousel.init.initialize_(rnn, recurrent="identity", bias=0.0)
    >>> torch.equal(rnn.weight_hh_l0, torch.eye(8))
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "INPUT_SCHEMES",
    "RECURRENT_SCHEMES",
    "echo_state_",
    "forget_gate_bias_",
    "identity_",
    "initialize_",
    "normal_",
    "orthogonal_",
    "recurrent_weights",
    "scale_to_spectral_radius_",
    "sparse_",
    "spectral_radius",
    "uniform_",
]

#: Schemes for recurrent (hidden-to-hidden) weights; ``"default"`` keeps the layer's own.
RECURRENT_SCHEMES = (
    "default",
    "orthogonal",
    "identity",
    "echo-state",
    "sparse",
    "uniform",
    "normal",
)
#: Schemes for input (input-to-hidden) weights.
INPUT_SCHEMES = ("default", "orthogonal", "sparse", "uniform", "normal")


def _check_generator(owner: str, generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{owner}: generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _fill(tensor: Tensor, values: Tensor) -> Tensor:
    """Copy CPU-sampled ``values`` into ``tensor`` (same numbers on every device)."""
    with torch.no_grad():
        tensor.copy_(values.to(dtype=tensor.dtype))
    return tensor


def _check_matrix(owner: str, tensor: Tensor, *, square: bool = False) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{owner}: tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{owner}: expected a 2-D weight matrix, got shape {tuple(tensor.shape)}")
    if square and tensor.shape[0] != tensor.shape[1]:
        raise ValueError(
            f"{owner}: expected a square matrix (the recurrence of one gate, (H, H)), "
            f"got shape {tuple(tensor.shape)}"
        )


def uniform_(tensor: Tensor, scale: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` with values drawn from ``U(-scale, scale)``.

    Args:
        tensor: any tensor, filled in place.
        scale: half-width of the range, ``>= 0``.
        generator: source of randomness (CPU); ``None`` uses torch's global generator.

    Returns:
        ``tensor``.
    """
    _check_generator("uniform_", generator)
    if scale < 0:
        raise ValueError(f"uniform_: scale must be >= 0, got {scale}")
    values = torch.empty(tensor.shape, dtype=torch.float64).uniform_(
        -scale, scale, generator=generator
    )
    return _fill(tensor, values)


def normal_(tensor: Tensor, std: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` with values drawn from ``N(0, std^2)``.

    Args:
        tensor: any tensor, filled in place.
        std: standard deviation, ``>= 0``.
        generator: source of randomness (CPU).

    Returns:
        ``tensor``.
    """
    _check_generator("normal_", generator)
    if std < 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    values = torch.empty(tensor.shape, dtype=torch.float64).normal_(0.0, std, generator=generator)
    return _fill(tensor, values)


def orthogonal_(
    tensor: Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill a matrix with a random (semi-)orthogonal matrix times ``gain``.

    For a square matrix :math:`W^\top W = W W^\top = g^2 I`, so a linear recurrence
    :math:`h_t = W h_{t-1}` neither explodes nor vanishes for ``gain=1`` (Saxe et al. 2014,
    "Exact solutions to the nonlinear dynamics of learning in deep linear neural networks").
    Non-square matrices get orthonormal rows or columns, whichever are fewer.

    Args:
        tensor: 2-D tensor ``(rows, cols)``, filled in place.
        gain: multiplier.
        generator: source of randomness (CPU).

    Returns:
        ``tensor``.

    Raises:
        ValueError: if ``tensor`` is not 2-D.
    """
    _check_matrix("orthogonal_", tensor)
    _check_generator("orthogonal_", generator)
    rows, cols = tensor.shape
    a = torch.randn(max(rows, cols), min(rows, cols), dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(a)  # q: (max, min) with orthonormal columns
    q = q * torch.sign(torch.diagonal(r))  # unique: the Haar-distributed factor (Mezzadri 2007)
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q)


def identity_(tensor: Tensor, scale: float = 1.0) -> Tensor:
    r"""Fill a matrix with ``scale`` times the identity (Le et al. 2015's IRNN).

    With ReLU units, zero biases and :math:`W_{hh} = I`, the hidden state is copied from step to
    step unless the input changes it, so gradients flow unchanged through time at the start of
    training. Le et al. use ``scale=1`` (and a smaller scale, e.g. 0.01, for some tasks).
    Non-square matrices get ones on the main diagonal.

    Args:
        tensor: 2-D tensor, filled in place.
        scale: the diagonal value.

    Returns:
        ``tensor``.
    """
    _check_matrix("identity_", tensor)
    return _fill(tensor, scale * torch.eye(*tensor.shape, dtype=torch.float64))


def spectral_radius(matrix: Tensor) -> float:
    """The largest absolute eigenvalue of a square matrix (computed in float64).

    Raises:
        ValueError: if ``matrix`` is not square.
    """
    _check_matrix("spectral_radius", matrix, square=True)
    eig = torch.linalg.eigvals(matrix.detach().to("cpu", torch.float64))
    return float(eig.abs().max())


def scale_to_spectral_radius_(tensor: Tensor, radius: float) -> Tensor:
    """Rescale a square matrix in place so that its spectral radius is ``radius``.

    Raises:
        ValueError: if ``tensor`` is not square, ``radius < 0``, or the matrix is nilpotent
            (spectral radius 0, e.g. all zeros), which no scaling can fix.
    """
    _check_matrix("scale_to_spectral_radius_", tensor, square=True)
    if radius < 0:
        raise ValueError(f"scale_to_spectral_radius_: radius must be >= 0, got {radius}")
    current = spectral_radius(tensor)
    if current < 1e-12:
        raise ValueError(
            "scale_to_spectral_radius_: the matrix has spectral radius 0 (e.g. all zeros or "
            "nilpotent), so it cannot be scaled to a positive radius; use more nonzero weights"
        )
    with torch.no_grad():
        tensor.mul_(radius / current)
    return tensor


def sparse_(
    tensor: Tensor,
    nonzero: int = 15,
    std: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Martens' sparse initialisation: each row (unit) gets ``nonzero`` weights from
    ``N(0, std^2)`` at random columns; the others are zero.

    Martens 2010 (section 5) uses 15 incoming connections per unit so that the units are
    neither saturated nor too alike, whatever the layer width. With ``nonzero >= cols`` the
    matrix is dense.

    Args:
        tensor: 2-D tensor ``(units, inputs)``, filled in place.
        nonzero: number of nonzero incoming weights per unit, ``>= 1``.
        std: standard deviation of the nonzero weights.
        generator: source of randomness (CPU).

    Returns:
        ``tensor``.
    """
    _check_matrix("sparse_", tensor)
    _check_generator("sparse_", generator)
    if isinstance(nonzero, bool) or not isinstance(nonzero, int) or nonzero < 1:
        raise ValueError(f"sparse_: nonzero must be an int >= 1, got {nonzero!r}")
    rows, cols = tensor.shape
    k = min(nonzero, cols)
    values = torch.zeros(rows, cols, dtype=torch.float64)
    for r in range(rows):
        idx = torch.randperm(cols, generator=generator)[:k]
        values[r, idx] = torch.randn(k, dtype=torch.float64, generator=generator) * std
    return _fill(tensor, values)


def echo_state_(
    tensor: Tensor,
    spectral_radius: float = 1.1,
    *,
    nonzero: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Echo-state-network style recurrent weights: Gaussian, rescaled to a spectral radius.

    The weights are drawn from :math:`N(0, 1)` (with ``nonzero``: that many per row, the rest
    zero, as :func:`sparse_`) and the matrix is rescaled so that its largest absolute
    eigenvalue is ``spectral_radius``. Jaeger 2001 keeps the radius below 1 for the echo state
    property of a fixed reservoir; Sutskever et al. 2013 (section 4) start *trained* RNNs at 1.1,
    slightly past the edge, so that information lasts long enough for momentum methods to learn
    long-range dependencies.

    Args:
        tensor: square 2-D tensor ``(H, H)``, filled in place.
        spectral_radius: the target largest absolute eigenvalue.
        nonzero: if given, number of nonzero weights per row (sparse reservoir); else dense.
        generator: source of randomness (CPU).

    Returns:
        ``tensor``.

    Raises:
        ValueError: if ``tensor`` is not square or ``spectral_radius < 0``.
    """
    _check_matrix("echo_state_", tensor, square=True)
    _check_generator("echo_state_", generator)
    if spectral_radius < 0:
        raise ValueError(f"echo_state_: spectral_radius must be >= 0, got {spectral_radius}")
    H = tensor.shape[0]
    values = torch.empty(H, H, dtype=torch.float64)
    for _ in range(10):  # a sparse draw can be nilpotent (radius 0); redraw then
        if nonzero is None:
            values.normal_(0.0, 1.0, generator=generator)
        else:
            sparse_(values, nonzero, 1.0, generator=generator)
        radius = float(torch.linalg.eigvals(values).abs().max())
        if radius > 1e-12:
            break
    else:
        raise ValueError(
            f"echo_state_: could not draw a matrix with a nonzero spectral radius with "
            f"nonzero={nonzero} for H={H}; use more nonzero weights"
        )
    return _fill(tensor, values * (spectral_radius / radius))


# ---------------------------------------------------------------------------- module level


@dataclass(frozen=True)
class RecurrentWeight:
    """One weight or bias of a recurrent layer, as :func:`recurrent_weights` finds it.

    Attributes:
        name: the parameter's qualified name in the module (``"rnn.weight_hh_l0"``).
        kind: ``"recurrent"`` (``weight_hh*``), ``"input"`` (``weight_ih*``) or ``"bias"``
            (``bias_ih*`` and ``bias_hh*``).
        tensor: the parameter.
        layer: the layer index (0 for single cells).
        hidden_size: ``H``; the weight has one ``(H, *)`` row block per gate.
        gates: the gate names in row order (``("i", "f", "g", "o")`` for LSTM, ``("r", "z",
            "n")`` for GRU, ``("h",)`` for RNN).
    """

    name: str
    kind: str
    tensor: Tensor
    layer: int
    hidden_size: int
    gates: tuple[str, ...]

    def blocks(self) -> list[Tensor]:
        """The views of the tensor, one per gate (rows ``k*H:(k+1)*H``)."""
        H = self.hidden_size
        return [self.tensor[k * H : (k + 1) * H] for k in range(self.tensor.shape[0] // H)]


_TORCH_GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}
_NAME = re.compile(r"^(weight_hh|weight_ih|bias_ih|bias_hh)(?:_l(\d+)(_reverse)?)?$")


def _gates_of(module: nn.Module, cell: object | None, rows: int, H: int) -> tuple[str, ...]:
    names = getattr(cell, "gate_names", None) if cell is not None else None
    if names is None:
        names = getattr(module, "gate_names", None)
    if isinstance(names, (tuple, list)) and len(names) * H == rows:
        return tuple(names)
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return _TORCH_GATES["LSTM"]
    if isinstance(module, (nn.GRU, nn.GRUCell)) or type(cell).__name__ == "GRUCell":
        return _TORCH_GATES["GRU"]
    if rows == H:
        return ("h",)
    return tuple(f"gate{k}" for k in range(rows // H))


def recurrent_weights(module: nn.Module) -> Iterator[RecurrentWeight]:
    """Every input weight, recurrent weight and bias of the recurrent layers and cells in
    ``module`` (carousel's and torch.nn's), with its layer, hidden size and gate order.

    Args:
        module: a layer, a cell, or any model containing them.

    Yields:
        :class:`RecurrentWeight` for each parameter named ``weight_ih*``, ``weight_hh*``,
        ``bias_ih*`` or ``bias_hh*``.
    """
    for prefix, sub in module.named_modules():
        H = getattr(sub, "hidden_size", None)
        if not isinstance(H, int):
            continue
        cells = None
        if hasattr(sub, "cell") and hasattr(sub, "_all_cells"):  # carousel torch-named layers
            cells = sub._all_cells()
            D = 2 if sub.bidirectional else 1
        for pname, p in sub.named_parameters(recurse=False):
            if p is None:
                continue
            m = _NAME.match(pname)
            if m is None:
                continue
            base, layer, reverse = m.group(1), int(m.group(2) or 0), m.group(3) is not None
            cell = None
            if cells is not None and m.group(2) is not None:
                cell = cells[layer * D + (1 if reverse else 0)]
            if m.group(2) is None:
                # a cell inside carousel.Recurrent: "cells.{k}" gives the layer
                km = re.search(r"cells\.(\d+)$", prefix)
                parent = _parent(module, prefix)
                if km is not None and parent is not None:
                    D = 2 if getattr(parent, "bidirectional", False) else 1
                    layer = int(km.group(1)) // D
                cell = sub
            kind = {"weight_hh": "recurrent", "weight_ih": "input"}.get(base, "bias")
            gates = _gates_of(sub, cell, p.shape[0], H)
            yield RecurrentWeight(
                name=f"{prefix}.{pname}" if prefix else pname,
                kind=kind,
                tensor=p,
                layer=layer,
                hidden_size=H,
                gates=gates,
            )


def _parent(root: nn.Module, prefix: str) -> nn.Module | None:
    parts = prefix.split(".")
    if len(parts) < 2:
        return None
    try:
        return root.get_submodule(".".join(parts[:-2]))
    except AttributeError:
        return None


def _default_scale(scheme: str, fan_in: int) -> float:
    return {
        "orthogonal": 1.0,
        "identity": 1.0,
        "echo-state": 1.1,
        "sparse": 1.0,
        "uniform": 1.0 / math.sqrt(fan_in),
        "normal": 1.0 / math.sqrt(fan_in),
    }[scheme]


def _apply(
    scheme: str,
    block: Tensor,
    scale: float | None,
    nonzero: int | None,
    generator: torch.Generator | None,
    name: str,
) -> None:
    s = _default_scale(scheme, block.shape[1]) if scale is None else scale
    if scheme == "orthogonal":
        orthogonal_(block, s, generator=generator)
    elif scheme == "identity":
        if block.shape[0] != block.shape[1]:
            raise ValueError(
                f"initialize_: recurrent='identity' needs square (H, H) blocks, but {name} has "
                f"blocks of shape {tuple(block.shape)} (an LSTM with proj_size?)"
            )
        identity_(block, s)
    elif scheme == "echo-state":
        if block.shape[0] != block.shape[1]:
            raise ValueError(
                f"initialize_: recurrent='echo-state' needs square (H, H) blocks, but {name} "
                f"has blocks of shape {tuple(block.shape)}"
            )
        echo_state_(block, s, nonzero=nonzero, generator=generator)
    elif scheme == "sparse":
        sparse_(block, 15 if nonzero is None else nonzero, s, generator=generator)
    elif scheme == "uniform":
        uniform_(block, s, generator=generator)
    elif scheme == "normal":
        normal_(block, s, generator=generator)


def initialize_(
    module: nn.Module,
    *,
    recurrent: str = "default",
    input: str = "default",
    recurrent_scale: float | None = None,
    input_scale: float | None = None,
    nonzero: int | None = None,
    bias: float | None = None,
    forget_bias: float | None = None,
    layers: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise the recurrent layers in ``module`` with the given schemes.

    Each gate's block of a stacked weight (``(G*H, *)``) is initialised separately, so an
    orthogonal LSTM has four orthogonal ``(H, H)`` recurrent blocks and an echo-state GRU three
    blocks of the given spectral radius.

    Args:
        module: a layer, cell or model holding recurrent layers.
        recurrent: scheme for ``weight_hh*``, one of :data:`RECURRENT_SCHEMES`.
        input: scheme for ``weight_ih*``, one of :data:`INPUT_SCHEMES`.
        recurrent_scale: the scheme's scale for recurrent weights: the gain (``orthogonal``,
            default 1), the diagonal (``identity``, default 1), the spectral radius
            (``echo-state``, default 1.1), the std of the nonzero weights (``sparse``, default
            1), the half-width (``uniform``) or std (``normal``) (default ``1/sqrt(fan_in)``).
        input_scale: the same for input weights.
        nonzero: nonzero weights per unit for ``sparse`` (default 15) and ``echo-state``
            (default: dense).
        bias: if given, every bias is set to this constant (IRNN: 0).
        forget_bias: if given, the LSTM forget-gate bias is set to this value (after ``bias``;
            see :func:`forget_gate_bias_`).
        layers: layer indices to initialise; ``None`` for all.
        generator: source of randomness (CPU).

    Returns:
        ``module``.

    Raises:
        ValueError: unknown scheme, a scheme that cannot apply to a weight's shape, or no
            recurrent weights in ``module``.
    """
    _check_generator("initialize_", generator)
    if recurrent not in RECURRENT_SCHEMES:
        raise ValueError(
            f"initialize_: recurrent must be one of {list(RECURRENT_SCHEMES)}, got {recurrent!r}"
        )
    if input not in INPUT_SCHEMES:
        raise ValueError(f"initialize_: input must be one of {list(INPUT_SCHEMES)}, got {input!r}")
    weights = [w for w in recurrent_weights(module) if layers is None or w.layer in layers]
    if not weights:
        raise ValueError(
            f"initialize_: found no recurrent weights (weight_hh*, weight_ih*) in "
            f"{type(module).__name__}" + (f" for layers={list(layers)}" if layers else "")
        )
    for w in weights:
        if w.kind == "recurrent" and recurrent != "default":
            for block in w.blocks():
                _apply(recurrent, block, recurrent_scale, nonzero, generator, w.name)
        elif w.kind == "input" and input != "default":
            for block in w.blocks():
                _apply(input, block, input_scale, nonzero, generator, w.name)
        elif w.kind == "bias" and bias is not None:
            with torch.no_grad():
                w.tensor.fill_(bias)
    if forget_bias is not None:
        forget_gate_bias_(module, forget_bias, layers=layers)
    return module


def forget_gate_bias_(
    module: nn.Module, value: float = 1.0, *, layers: Sequence[int] | None = None
) -> nn.Module:
    """Set the forget-gate bias of every LSTM layer in ``module`` to ``value``.

    A positive forget bias keeps the memory cell's content at the start of training, so
    gradients flow through the constant error carousel (Gers et al. 2000; Jozefowicz et al.
    2015 recommend 1). With torch.nn's two biases, the forget rows of ``bias_ih`` are set to
    ``value`` and those of ``bias_hh`` to 0, so their sum is ``value``.

    Args:
        module: a layer, cell or model holding LSTM layers.
        value: the forget-gate bias.
        layers: layer indices; ``None`` for all.

    Returns:
        ``module``.

    Raises:
        ValueError: if ``module`` holds no LSTM with a forget gate (the NFG and CIFG variants
            have none).
    """
    done = False
    for w in recurrent_weights(module):
        if w.kind != "bias" or "f" not in w.gates or (layers is not None and w.layer not in layers):
            continue
        block = w.blocks()[w.gates.index("f")]
        with torch.no_grad():
            block.fill_(value if w.name.split(".")[-1].startswith("bias_ih") else 0.0)
        done = True
    if not done:
        lstm_like = [w for w in recurrent_weights(module) if w.kind == "bias" and "g" in w.gates]
        if lstm_like:
            raise ValueError(
                "forget_gate_bias_: the LSTM in this module has no forget gate (variant NFG or "
                "CIFG); set the bias of its input gate instead"
            )
        raise ValueError(
            f"forget_gate_bias_: found no LSTM forget-gate bias in {type(module).__name__} "
            "(an LSTM without bias=False is needed)"
        )
    return module
