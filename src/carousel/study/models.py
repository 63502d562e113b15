"""The models of the long-lag study: recurrent nets with a linear read-out, the delay-tap
baseline, and how each is optimised.

Each entry of :data:`MODELS` is a :class:`ModelSpec`: architecture, initialisation and optimiser
together, because the lectures' claims are about such pairs ("a tanh RNN trained by plain
SGD", "the echo-state initialisation with Nesterov momentum").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

import carousel
from carousel._checks import check_choice
from carousel.baselines.delay_taps import DelayTapNet
from carousel.init import initialize_, recurrent_weights

__all__ = ["MODELS", "ModelSpec", "RecurrentNet", "get_model_spec"]


class RecurrentNet(nn.Module):
    """A recurrent layer followed by a linear read-out at every step.

    Args:
        rnn: a carousel (or torch.nn) recurrent layer with ``batch_first=False``.
        output_size: ``O``.

    Shape:
        - input ``(T, B, I)``; output ``(T, B, O)``.
    """

    def __init__(
        self, rnn: carousel.RNN | carousel.GRU | carousel.LSTM | nn.RNNBase, output_size: int
    ) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: architecture, initialisation and optimiser.

    Attributes:
        name: registry name.
        description: one line for the results table.
        family: ``"lstm"``, ``"gru"``, ``"rnn"`` (tanh) or ``"delay-tap"``.
        hidden_size: recurrent units (hidden layer width for the delay-tap net).
        variant: LSTM variant (a key of :data:`carousel.LSTM_VARIANTS`), LSTM only.
        init: ``"default"`` (torch.nn's uniform ranges; LSTM forget-gate bias +1) or
            ``"sutskever2013"`` (echo-state recurrent matrix, see :func:`init_sutskever2013`).
        optimizer: ``"adam"``, ``"sgd"`` (plain, no momentum) or ``"nesterov"``.
        lr: learning rate.
        momentum: final momentum for ``"nesterov"`` (the schedule rises to it).
        batch_size: sequences per update.
        clip_norm: gradient clipping by global norm, or ``None``.
        window: delay taps of the delay-tap net.
        forget_bias: initial bias of the gate that keeps the memory: the LSTM forget gate
            (Gers et al. 2000 use 1; a larger one keeps the cells' contents over long lags
            from the start of training) and the GRU update gate ``z`` (torch's convention:
            ``z = 1`` keeps ``h``).
        input_bias: initial LSTM input-gate bias; Hochreiter & Schmidhuber 1997 start input
            gates negative (-3, -6, ...) so that cells are not flooded before they learn what
            to store.
        spectral_radius: recurrent spectral radius of the ``"sutskever2013"`` initialisation.
        input_scale: standard deviation of its input weights.
    """

    name: str
    description: str
    family: str
    hidden_size: int = 8
    variant: str | None = None
    init: str = "default"
    optimizer: str = "adam"
    lr: float = 1e-2
    momentum: float = 0.0
    batch_size: int = 32
    clip_norm: float | None = 1.0
    window: int = 0
    forget_bias: float = 1.0
    input_bias: float = 0.0
    spectral_radius: float = 1.1
    input_scale: float = 0.001

    def __post_init__(self) -> None:
        check_choice("ModelSpec", "family", self.family, ("lstm", "gru", "rnn", "delay-tap"))
        check_choice("ModelSpec", "init", self.init, ("default", "sutskever2013"))
        check_choice("ModelSpec", "optimizer", self.optimizer, ("adam", "sgd", "nesterov"))

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self, input_size: int, output_size: int, *, seed: int) -> nn.Module:
        """The model, its weights drawn from ``torch.manual_seed(seed)``."""
        torch.manual_seed(seed)
        if self.family == "delay-tap":
            return DelayTapNet(
                input_size, output_size, window=self.window, hidden_size=self.hidden_size
            )
        H = self.hidden_size
        rnn: carousel.RNN | carousel.GRU | carousel.LSTM
        if self.family == "lstm":
            rnn = carousel.LSTM(input_size, H, variant=self.variant)
        elif self.family == "gru":
            rnn = carousel.GRU(input_size, H)
        else:
            rnn = carousel.RNN(input_size, H, nonlinearity="tanh")
        model = RecurrentNet(rnn, output_size)
        if self.init == "sutskever2013":
            init_sutskever2013(
                model, spectral_radius=self.spectral_radius, input_scale=self.input_scale,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
        elif self.family == "lstm":
            _gate_bias(rnn, "f", self.forget_bias)
            _gate_bias(rnn, "i", self.input_bias)
        elif self.family == "gru":
            _gate_bias(rnn, "z", self.forget_bias)
        return model

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr)
        # momentum 0 (an ablation) is plain SGD: torch's Nesterov needs a positive momentum
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0
        )

    def momentum_at(self, update: int) -> float | None:
        """Sutskever et al. 2013's schedule (eq. 5): ``mu_t = min(1 - 2^(-1 - log2(t/250 +
        1)), mu_max)``, for ``"nesterov"``; ``None`` for the other optimisers."""
        if self.optimizer != "nesterov":
            return None
        mu = 1.0 - 2.0 ** (-1.0 - math.log2(math.floor(update / 250) + 1))
        return min(mu, self.momentum)


def _gate_bias(rnn: nn.Module, gate: str, value: float) -> None:
    """Set the bias of ``gate`` (``"i"``, ``"f"``, ``"z"``, ...) where the layer has it: the
    gate's rows of ``bias_ih`` to ``value``, of ``bias_hh`` to 0 (as
    :func:`carousel.init.forget_gate_bias_` does for the forget gate)."""
    for w in recurrent_weights(rnn):
        if w.kind != "bias" or gate not in w.gates:
            continue
        with torch.no_grad():
            w.blocks()[w.gates.index(gate)].fill_(value if ".bias_ih" in f".{w.name}" else 0.0)


def init_sutskever2013(
    model: RecurrentNet,
    *,
    spectral_radius: float = 1.1,
    nonzeros: int = 15,
    input_scale: float = 0.001,
    generator: torch.Generator | None = None,
) -> None:
    """The echo-state initialisation of Sutskever, Martens, Dahl & Hinton 2013 (section 4) via
    :mod:`carousel.init`: each hidden unit gets ``nonzeros`` incoming recurrent weights from a
    unit Gaussian, the matrix is scaled to the given spectral radius, input weights are
    Gaussian with standard deviation ``input_scale``, biases are zero.
    """
    initialize_(
        model.rnn,
        recurrent="echo-state",
        recurrent_scale=spectral_radius,
        nonzero=nonzeros,
        input="normal",
        input_scale=input_scale,
        bias=0.0,
        generator=generator,
    )


def _lstm_variant_specs() -> dict[str, ModelSpec]:
    out = {}
    for key in carousel.LSTM_VARIANTS:
        name = f"lstm-{key}"
        # CIFG's forget gate is 1 - i: an input bias of -5 starts it at the others' +5
        out[name] = ModelSpec(
            name, f"LSTM variant {key} (Greff et al. 2017), 8 cells, as lstm", "lstm",
            variant=key, forget_bias=5.0, input_bias=-5.0 if key == "CIFG" else -3.0,
        )  # fmt: skip
    return out


#: The models of the study by name.
MODELS: dict[str, ModelSpec] = {
    "lstm": ModelSpec(
        "lstm", "LSTM, 8 cells, gate biases input -3 / forget +5, Adam 1e-2", "lstm",
        forget_bias=5.0, input_bias=-3.0,
    ),
    "gru": ModelSpec("gru", "GRU, 8 units, update-gate bias +5, Adam 1e-2", "gru", forget_bias=5.0),
    "rnn-sgd": ModelSpec(
        "rnn-sgd", "tanh RNN, 32 units, plain SGD 0.05", "rnn", hidden_size=32,
        optimizer="sgd", lr=0.05,
    ),
    "rnn-adam": ModelSpec(
        "rnn-adam", "tanh RNN, 32 units, Adam 1e-3", "rnn", hidden_size=32, lr=1e-3
    ),
    "rnn-sutskever2013": ModelSpec(
        "rnn-sutskever2013",
        "tanh RNN, 100 units, echo-state init (radius 1.1), Nesterov momentum to 0.99",
        # lr 1e-2 for the batch-mean loss: 1e-3 left the plateau at none of T = 20, 40, 80
        # (docs/results.md, "Sutskever et al. 2013's initialisation and momentum")
        "rnn", hidden_size=100, init="sutskever2013", optimizer="nesterov", lr=1e-2,
        momentum=0.99, batch_size=100,
    ),
    "delay-tap": ModelSpec(
        "delay-tap", "feed-forward net on 16 delay taps, 256 tanh units, Adam 3e-3",
        "delay-tap", hidden_size=256, lr=3e-3, window=16, batch_size=64,
    ),
    **_lstm_variant_specs(),
}  # fmt: skip


def get_model_spec(name: str, **overrides: Any) -> ModelSpec:
    """A registered model, with fields replaced by ``overrides``.

    Raises:
        ValueError: if ``name`` is unknown.
    """
    if name not in MODELS:
        raise ValueError(f"study: unknown model {name!r}; expected one of {list(MODELS)}")
    spec = MODELS[name]
    return replace(spec, **overrides) if overrides else spec
