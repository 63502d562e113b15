"""A sequence recogniser trained with CTC: strided front end, stacked bidirectional recurrent
core, per-frame class log probabilities (Graves et al. 2009, "A novel connectionist system for
unconstrained handwriting recognition"; Graves et al. 2006 for CTC)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel._checks import check_positive_int, check_shape, check_tensor
from carousel._config import Checks
from carousel.layers import LSTM
from carousel.models.config import ModelConfig
from carousel.models.sequence import ModelOutput, build_recurrent, init_model_

if TYPE_CHECKING:
    from carousel._types import FactoryKwargs

__all__ = ["CTCRecognizer", "RecognizerModelConfig", "RecognizerTrace"]


@dataclass(frozen=True)
class RecognizerModelConfig(ModelConfig):
    """The ``[model]`` table of a CTC recogniser: :class:`~carousel.models.ModelConfig` plus
    the strided front end."""

    # input steps joined into one frame by the front end (T' = ceil(T / stride))
    stride: int = 4
    # units of the front end (a convolution of kernel and stride `stride`, then tanh)
    frontend_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        c = Checks("model")
        c.positive_int("stride", self.stride)
        c.positive_int("frontend_size", self.frontend_size, minimum=0)
        if self.frontend_size == 0 and self.stride != 1:
            c.fail("stride", "must be 1 without a front end (frontend_size = 0)")
        c.done()


class RecognizerTrace(NamedTuple):
    """Everything the lecture 7e picture shows, for one sequence.

    Attributes:
        log_probs: ``(T', C)`` per-frame class log probabilities.
        cells: ``(T', L*D, H)`` memory-cell states of every layer and direction (LSTM ``c``;
            ``h`` for RNN/GRU), in forward time order.
        frame_of_point: ``(T,)`` the output frame each input point feeds.
    """

    log_probs: Tensor
    cells: Tensor
    frame_of_point: Tensor


class CTCRecognizer(nn.Module):
    r"""Strided front end, stacked (bidirectional) recurrent core and a softmax over the
    ``C`` CTC classes (blank included).

    .. math::

        z_\tau = \tanh\!\big(W_f [x_{s\tau}; \dots; x_{s\tau + s - 1}] + b_f\big), \qquad
        h_{1:T'} = \mathrm{BiRNN}(z_{1:T'}), \qquad
        y_\tau = \mathrm{log\,softmax}(W_o h_\tau + b_o)

    The front end joins ``stride`` consecutive input steps into one frame (a convolution of
    kernel and stride ``s``), so ``T' = ceil(T / s)``: shorter sequences make the recurrent
    core ``s`` times cheaper, at the cost of CTC needing ``T'`` frames for a target of length
    ``L`` plus repeats (:func:`carousel.ctc.min_ctc_length`).

    Args:
        input_size: ``I``, features per input step.
        num_classes: ``C``, output classes including the blank.
        config: the recurrent core (default: 2-layer bidirectional LSTM with 128 units).
        stride: ``s``, input steps per frame (1: no front end subsampling).
        frontend_size: units of the front end (0: no front end layer; then ``stride`` must
            be 1).
        generator: randomness for ``config.init``.
        device, dtype: of the parameters.

    Shape:
        - inputs ``(T, B, I)``, lengths ``(B,)``; output ``(T', B, C)`` log probabilities,
          output lengths ``(B,)``.

    Example:
        >>> import torch
        >>> from carousel.models import ModelConfig
        >>> m = CTCRecognizer(4, 27, ModelConfig(hidden_size=16, bidirectional=True), stride=3)
        >>> out = m(torch.randn(10, 2, 4), lengths=torch.tensor([10, 7]))
        >>> tuple(out.output.shape), out.lengths.tolist()
        ((4, 2, 27), [4, 3])
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        config: ModelConfig | None = None,
        *,
        stride: int = 4,
        frontend_size: int = 64,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(hidden_size=128, num_layers=2, bidirectional=True)
        if not isinstance(config, ModelConfig):
            raise TypeError(
                f"CTCRecognizer: config must be a ModelConfig, got {type(config).__name__}"
            )
        self.input_size = check_positive_int("CTCRecognizer", "input_size", input_size)
        self.num_classes = check_positive_int(
            "CTCRecognizer", "num_classes", num_classes, minimum=2
        )
        self.stride = check_positive_int("CTCRecognizer", "stride", stride)
        self.frontend_size = check_positive_int(
            "CTCRecognizer", "frontend_size", frontend_size, minimum=0
        )
        if self.frontend_size == 0 and self.stride != 1:
            raise ValueError("CTCRecognizer: stride > 1 needs a front end (frontend_size > 0)")
        self.config = config
        kw: FactoryKwargs = {"device": device, "dtype": dtype}
        if self.frontend_size:
            self.frontend: nn.Module | None = nn.Conv1d(
                input_size, frontend_size, kernel_size=stride, stride=stride, **kw
            )
            rnn_input = frontend_size
        else:
            self.frontend = None
            rnn_input = input_size
        self.rnn = build_recurrent(config, rnn_input, **kw)
        D = 2 if config.bidirectional else 1
        self.head = nn.Linear(D * (config.proj_size or config.hidden_size), num_classes, **kw)
        init_model_(self, config.init, generator=generator)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames per sequence after the front end: ``ceil(lengths / stride)``."""
        return torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")

    def _frames(self, inputs: Tensor) -> Tensor:
        if self.frontend is None:
            return inputs
        T = inputs.shape[0]
        pad = (-T) % self.stride
        x = inputs.permute(1, 2, 0)  # (B, I, T)
        if pad:
            x = F.pad(x, (0, pad))
        return torch.tanh(self.frontend(x)).permute(2, 0, 1)  # (T', B, F)

    def forward(
        self, inputs: Tensor, state: Any = None, *, lengths: Tensor | None = None
    ) -> ModelOutput:
        """Per-frame log probabilities.

        Args:
            inputs: ``(T, B, I)`` features (zero past each sequence's end).
            state: initial state of the recurrent core, or ``None``.
            lengths: ``(B,)`` valid input steps per sequence (default: all ``T``).

        Returns:
            :class:`~carousel.models.ModelOutput` with ``output`` the ``(T', B, C)`` log
            probabilities, ``state`` the core's final state and ``lengths`` the ``(B,)``
            output frames per sequence. On the CPU, a batch of unequal lengths through a
            standard LSTM core with no initial ``state`` runs on the padded fast path (see
            ``_padded_core``): same outputs, and ``state`` is ``None``.

        Raises:
            ValueError: wrong input shape or lengths.
        """
        check_tensor("CTCRecognizer", "inputs", inputs)
        check_shape("CTCRecognizer", "inputs", inputs, (None, None, self.input_size), "TBI")
        T, B = inputs.shape[:2]
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=inputs.device)
        lengths = torch.as_tensor(lengths, device=inputs.device)
        out_lengths = self.output_lengths(lengths)
        z = self._frames(inputs)
        if bool((out_lengths == z.shape[0]).all()):
            out, final = self.rnn(z, state)  # no padding: the dense kernel, same result
        elif state is None and self._padded_core_applies(z):
            out, final = self._padded_core(z, out_lengths), None
        else:
            out, final = self.rnn(z, state, lengths=out_lengths)
        return ModelOutput(self.head(out).log_softmax(-1), final, out_lengths)

    def _padded_core_applies(self, z: Tensor) -> bool:
        rnn = self.rnn
        return (
            isinstance(rnn, LSTM)
            and z.device.type == "cpu"
            and rnn.proj_size == 0
            and not rnn.learn_initial_state
            and not rnn.batch_first
            and rnn.resolve_impl(device=z.device) == "fused"
        )

    def _padded_core(self, z: Tensor, lengths: Tensor) -> Tensor:
        """The LSTM core over a padded batch without packing it.

        torch's oneDNN LSTM (the fast CPU kernel, forward and backward) runs only on dense
        input; a packed sequence takes a slower generic path (about 3x slower a training step
        here). Each direction of each layer therefore runs densely over the padded batch: the
        forward direction as it is (its outputs before a sequence's end never see the padding),
        the backward direction on each sequence reversed *within its length*, its outputs
        reversed back. The outputs are those of the packed run (zero past each end); the
        final states are not computed (the LSTM's ``c`` at each sequence's end is not an output
        of the kernel), which a CTC readout never needs.

        Shape:
            ``z`` ``(T', B, F)``, ``lengths`` ``(B,)``; returns ``(T', B, D*H)``.
        """
        rnn = self.rnn
        T, B = z.shape[:2]
        t = torch.arange(T, device=z.device).unsqueeze(1)  # (T', 1)
        valid = t < lengths.unsqueeze(0)  # (T', B)
        rev = torch.where(valid, lengths.unsqueeze(0) - 1 - t, t)  # its own inverse

        def reverse(x: Tensor) -> Tensor:
            return x.gather(0, rev.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        h0 = z.new_zeros(1, B, rnn.hidden_size)
        names = (
            ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            if rnn.bias
            else ("weight_ih", "weight_hh")
        )
        x = z
        for k in range(rnn.num_layers):
            if k and rnn.dropout > 0 and self.training:
                x = F.dropout(x, rnn.dropout, training=True)
            outs = []
            for suffix in ("", "_reverse") if rnn.bidirectional else ("",):
                weights = [getattr(rnn, f"{n}_l{k}{suffix}") for n in names]
                inp = reverse(x) if suffix else x
                o = torch._VF.lstm(
                    inp, (h0, h0), weights, rnn.bias, 1, 0.0, self.training, False, False
                )[0]
                outs.append(reverse(o) if suffix else o)
            x = torch.cat(outs, -1) if len(outs) > 1 else outs[0]  # (T', B, D*H)
        return x * valid.unsqueeze(-1).to(x.dtype)

    def trace(self, inputs: Tensor) -> RecognizerTrace:
        """Run one sequence and keep every memory-cell state (for the lecture 7e picture).

        Args:
            inputs: ``(T, I)`` features of one sequence.

        Returns:
            :class:`RecognizerTrace`.
        """
        check_shape("CTCRecognizer.trace", "inputs", inputs, (None, self.input_size), "TI")
        z = self._frames(inputs.unsqueeze(1))
        res = self.rnn(z, return_states=True)
        states = res.states
        cells = (
            states.c
            if hasattr(states, "c")
            else (states if isinstance(states, Tensor) else states[0])
        )
        # cells: (L*D, T', 1, H) -> (T', L*D, H)
        cells = cells[:, :, 0].permute(1, 0, 2)
        log_probs = self.head(res.output[:, 0]).log_softmax(-1)
        frame = torch.arange(inputs.shape[0], device=inputs.device) // self.stride
        return RecognizerTrace(log_probs, cells, frame)
