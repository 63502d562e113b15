"""A recurrent model for sequence tasks: input features, a recurrent core, a linear readout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import torch
from torch import Tensor, nn

from carousel._checks import check_choice, check_positive_int
from carousel.init import initialize_
from carousel.layers import GRU, LSTM, RNN
from carousel.layers.sequence import state_fields
from carousel.models.config import InitConfig, ModelConfig

if TYPE_CHECKING:
    from carousel._types import FactoryKwargs

__all__ = [
    "READOUTS",
    "ModelOutput",
    "SequenceModel",
    "build_recurrent",
    "init_model_",
    "seeded_construction",
]

#: ``"per-step"``: one output per time step (a tagger, a language model);
#: ``"last"``: one output per sequence from the final state (a classifier).
READOUTS = ("per-step", "last")


class ModelOutput(NamedTuple):
    """What every task model returns.

    Attributes:
        output: ``(T, B, O)`` per-step outputs (logits, predictions), or ``(B, O)`` for
            per-sequence readouts.
        state: the final recurrent state (the layer's state type, fields ``(L*D, B, *)``); the
            training loop carries it, detached, across the chunks of a stream.
        lengths: ``(B,)`` output lengths if the model changes them (strided front ends), else
            ``None``.
    """

    output: Tensor
    state: Any = None
    lengths: Tensor | None = None


class _LayerKwargs(TypedDict):
    """The layer arguments :func:`build_recurrent` passes to RNN, LSTM and GRU alike."""

    num_layers: int
    bidirectional: bool
    dropout: float
    learn_initial_state: bool
    impl: str
    device: torch.device | str | None
    dtype: torch.dtype | None


def build_recurrent(
    config: ModelConfig,
    input_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> RNN | LSTM | GRU:
    """The recurrent layer a :class:`ModelConfig` describes (not yet initialised by
    ``config.init``; see :func:`init_model_`)."""
    common = _LayerKwargs(
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        learn_initial_state=config.learn_initial_state,
        impl=config.impl,
        device=device,
        dtype=dtype,
    )
    if config.cell == "rnn":
        return RNN(input_size, config.hidden_size, nonlinearity=config.nonlinearity, **common)
    if config.cell == "lstm":
        return LSTM(
            input_size,
            config.hidden_size,
            proj_size=config.proj_size,
            variant=config.variant,
            **common,
        )
    return GRU(input_size, config.hidden_size, reset_after=config.reset_after, **common)


def init_model_(
    model: nn.Module, init: InitConfig, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Apply ``init`` to every recurrent layer of ``model`` (nothing if it is the default)."""
    if init.is_default:
        return model
    return initialize_(
        model,
        recurrent=init.recurrent,
        input=init.input,
        recurrent_scale=init.recurrent_scale,
        input_scale=init.input_scale,
        nonzero=init.nonzero,
        bias=init.bias,
        forget_bias=init.forget_bias,
        generator=generator,
    )


@contextlib.contextmanager
def seeded_construction(
    generator: torch.Generator | None, device: torch.device | str | None = None
) -> Iterator[None]:
    """Make the layers' own ``reset_parameters`` (which draw from torch's global generator)
    draw from a seed taken from ``generator``, leaving the global generator as it was.

    With ``generator=None`` nothing changes.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class SequenceModel(nn.Module):
    r"""Input features, a recurrent core (any of carousel's layers) and a linear readout.

    .. math::

        h_{1:T} = \mathrm{RNN}(\mathrm{features}(x_{1:T})), \qquad
        y_t = W_{out} h_t + b_{out} \;\; (\text{per-step}), \qquad
        y = W_{out} h_T + b_{out} \;\; (\text{last})

    With ``readout="last"`` the output comes from the final state of the last layer (both
    directions), read at each sequence's own end when ``lengths`` is given.

    Args:
        input_size: ``I``, features per step, or the vocabulary size with ``embedding_size``.
        output_size: ``O``, outputs per step (or per sequence).
        config: the recurrent core (:class:`ModelConfig`); its ``init`` is applied.
        readout: one of :data:`READOUTS`.
        embedding_size: if given, inputs are token ids ``(T, B)`` looked up in an
            ``nn.Embedding(input_size, embedding_size)``.
        generator: source of all randomness of the initialisation (the layers' default
            initialisation and ``config.init``); ``None`` uses torch's global generator.
        device, dtype: of the parameters.

    Shape:
        - inputs: ``(T, B, I)`` (or ``(T, B)`` token ids with ``embedding_size``).
        - output: ``(T, B, O)`` per-step, ``(B, O)`` last.

    Example:
        >>> import torch
        >>> from carousel.models import ModelConfig, SequenceModel
        >>> model = SequenceModel(2, 1, ModelConfig(cell="gru", hidden_size=8))
        >>> out = model(torch.randn(5, 3, 2))
        >>> tuple(out.output.shape), tuple(out.state.shape)
        ((5, 3, 1), (1, 3, 8))
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        config: ModelConfig | None = None,
        *,
        readout: str = "per-step",
        embedding_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        config = ModelConfig() if config is None else config
        if not isinstance(config, ModelConfig):
            raise TypeError(
                f"SequenceModel: config must be a ModelConfig, got {type(config).__name__}"
            )
        check_positive_int("SequenceModel", "input_size", input_size)
        check_positive_int("SequenceModel", "output_size", output_size)
        self.readout = check_choice("SequenceModel", "readout", readout, READOUTS)
        self.config = config
        self.input_size, self.output_size = input_size, output_size
        kw: FactoryKwargs = {"device": device, "dtype": dtype}
        if embedding_size is not None:
            check_positive_int("SequenceModel", "embedding_size", embedding_size)
        with seeded_construction(generator, device):
            self.embedding: nn.Embedding | None = None
            if embedding_size is not None:
                self.embedding = nn.Embedding(input_size, embedding_size, **kw)
            self.rnn = build_recurrent(config, embedding_size or input_size, **kw)
            D = 2 if config.bidirectional else 1
            out = config.proj_size or config.hidden_size
            self.head = nn.Linear(D * out, output_size, **kw)
        init_model_(self, config.init, generator=generator)

    def features(self, inputs: Tensor) -> Tensor:
        """The recurrent core's input: ``inputs`` itself, or its embedding."""
        return inputs if self.embedding is None else self.embedding(inputs)

    def decode(self, outputs: Tensor, state: Any) -> Tensor:
        """The readout from the core's outputs ``(T, B, D*H)`` and final state."""
        if self.readout == "per-step":
            return self.head(outputs)
        h = state_fields(state)[0]  # (L*D, B, H)
        D = 2 if self.config.bidirectional else 1
        last = torch.cat(list(h[-D:]), dim=-1)  # (B, D*H)
        return self.head(last)

    def forward(
        self, inputs: Tensor, state: Any = None, *, lengths: Tensor | None = None
    ) -> ModelOutput:
        """Run the model over whole sequences.

        Args:
            inputs: ``(T, B, I)`` features or ``(T, B)`` token ids.
            state: initial state of the core (fields ``(L*D, B, *)``), e.g. carried from the
                previous chunk of a stream; ``None`` for the default.
            lengths: ``(B,)`` sequence lengths (see :class:`carousel.LSTM`).

        Returns:
            :class:`ModelOutput` ``(output, state)``.
        """
        x = self.features(inputs)
        out, final = self.rnn(x, state, lengths=lengths)
        return ModelOutput(self.decode(out, final), final)
