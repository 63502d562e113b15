"""Model configuration: the recurrent core of a task model, and its initialisation."""

from __future__ import annotations

from dataclasses import dataclass, field

from carousel._config import Checks
from carousel.functional.lstm import LSTM_VARIANTS
from carousel.init import INPUT_SCHEMES, RECURRENT_SCHEMES

__all__ = ["CELLS", "InitConfig", "ModelConfig"]

#: Recurrent layers a model can be built from.
CELLS = ("rnn", "lstm", "gru")


@dataclass(frozen=True)
class InitConfig:
    """How the recurrent layers are initialised (see :func:`carousel.init.initialize_`)."""

    # scheme for recurrent (hidden-to-hidden) weights: default (the layer's own), orthogonal,
    # identity (IRNN), echo-state, sparse, uniform or normal; each gate's (H, H) block alone
    recurrent: str = "default"
    # scheme for input (input-to-hidden) weights: default, orthogonal, sparse, uniform, normal
    input: str = "default"
    # the recurrent scheme's scale: gain (orthogonal), diagonal (identity), spectral radius
    # (echo-state, default 1.1), std (sparse, normal) or half-width (uniform); none = default
    recurrent_scale: float | None = None
    # the input scheme's scale, as recurrent_scale
    input_scale: float | None = None
    # nonzero weights per unit for sparse (default 15) and echo-state (default dense)
    nonzero: int | None = None
    # if set, every recurrent-layer bias is set to this constant (IRNN: 0)
    bias: float | None = None
    # if set, the LSTM forget-gate bias (1.0 is the usual choice)
    forget_bias: float | None = None

    def __post_init__(self) -> None:
        c = Checks("model.init")
        c.choice("recurrent", self.recurrent, RECURRENT_SCHEMES)
        c.choice("input", self.input, INPUT_SCHEMES)
        c.optional_number("recurrent_scale", self.recurrent_scale, minimum=0.0)
        c.optional_number("input_scale", self.input_scale, minimum=0.0)
        c.optional_int("nonzero", self.nonzero)
        c.optional_number("bias", self.bias)
        c.optional_number("forget_bias", self.forget_bias)
        c.done()

    @property
    def is_default(self) -> bool:
        return self == InitConfig()


@dataclass(frozen=True)
class ModelConfig:
    """The recurrent core of a model: which layer, how big, how initialised.

    Options that apply to one kind of layer only (``nonlinearity`` for ``rnn``, ``variant`` and
    ``proj_size`` for ``lstm``, ``reset_after`` for ``gru``) are rejected for the others.
    """

    # recurrent layer: rnn (Elman, carousel.RNN), lstm (carousel.LSTM) or gru (carousel.GRU)
    cell: str = "lstm"
    # H: units per layer and direction
    hidden_size: int = 64
    # stacked recurrent layers
    num_layers: int = 1
    # run a second layer backwards in time and concatenate (not with truncated BPTT streams)
    bidirectional: bool = False
    # dropout between stacked layers, in training
    dropout: float = 0.0
    # rnn only: tanh or relu
    nonlinearity: str = "tanh"
    # lstm only: variant of Greff et al. 2017 (NP is torch.nn's LSTM; vanilla has peepholes;
    # also NIG NFG NOG NIAF NOAF CIFG FGR LN)
    variant: str = "NP"
    # lstm only: size of the projected output (0: no projection)
    proj_size: int = 0
    # gru only: false for Cho et al. 2014's original GRU (reset before the recurrent matrix)
    reset_after: bool = True
    # learn the initial state h_0 (and c_0) by backpropagating to it
    learn_initial_state: bool = False
    # implementation path: auto, fused, bptt or reference (see carousel.RNN)
    impl: str = "auto"
    # initialisation of the recurrent layers
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self) -> None:
        c = Checks("model")
        c.choice("cell", self.cell, CELLS)
        c.positive_int("hidden_size", self.hidden_size)
        c.positive_int("num_layers", self.num_layers)
        c.boolean("bidirectional", self.bidirectional)
        c.number("dropout", self.dropout, minimum=0.0, maximum=1.0)
        c.choice("nonlinearity", self.nonlinearity, ("tanh", "relu"))
        c.choice("variant", self.variant, tuple(LSTM_VARIANTS))
        c.positive_int("proj_size", self.proj_size, minimum=0)
        c.boolean("reset_after", self.reset_after)
        c.boolean("learn_initial_state", self.learn_initial_state)
        c.choice("impl", self.impl, ("auto", "fused", "bptt", "reference"))
        if not isinstance(self.init, InitConfig):
            c.fail("init", f"must be an InitConfig, got {type(self.init).__name__}")
        for name, default, cell in (
            ("nonlinearity", "tanh", "rnn"),
            ("variant", "NP", "lstm"),
            ("proj_size", 0, "lstm"),
            ("reset_after", True, "gru"),
        ):
            if getattr(self, name) != default and self.cell != cell:
                c.fail(name, f"applies to cell='{cell}' only, but cell={self.cell!r}")
        if (
            self.cell == "lstm"
            and isinstance(self.proj_size, int)
            and isinstance(self.hidden_size, int)
            and self.proj_size >= self.hidden_size > 0
        ):
            c.fail("proj_size", f"must be smaller than hidden_size={self.hidden_size}")
        c.done()
