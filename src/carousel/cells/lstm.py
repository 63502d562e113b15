"""The LSTM family in one cell: torch.nn's LSTM and every variant of Greff et al. 2017."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from carousel._checks import check_positive_int
from carousel.cells.base import RecurrentCell
from carousel.functional.lstm import (
    LSTM_VARIANTS,
    LSTMGateState,
    LSTMState,
    LSTMVariant,
    lstm_step,
)

if TYPE_CHECKING:
    from carousel._types import FactoryKwargs

__all__ = ["LSTMCell", "resolve_variant"]

_SWITCHES = tuple(f.name for f in dataclasses.fields(LSTMVariant))


def resolve_variant(owner: str, variant: str | LSTMVariant | None, switches: dict) -> LSTMVariant:
    """Combine a named (or given) variant with keyword switches; switches set to ``None`` keep
    the variant's value."""
    if variant is None:
        base = LSTMVariant()
    elif isinstance(variant, LSTMVariant):
        base = variant
    elif isinstance(variant, str):
        if variant not in LSTM_VARIANTS:
            raise ValueError(
                f"{owner}: variant must be one of {sorted(LSTM_VARIANTS)} or an LSTMVariant, "
                f"got {variant!r}"
            )
        base = LSTM_VARIANTS[variant]
    else:
        raise TypeError(
            f"{owner}: variant must be a str or LSTMVariant, got {type(variant).__name__}"
        )
    given = {k: bool(v) for k, v in switches.items() if v is not None}
    try:
        return dataclasses.replace(base, **given)
    except ValueError as e:
        raise ValueError(f"{owner}: {e}") from None


class LSTMCell(RecurrentCell):
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997; forget gate: Gers et al.
    2000), with every variant of Greff et al. 2017 as an option.

    .. math::

        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + w_{ci} \odot c_{t-1}) \\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + w_{cf} \odot c_{t-1}) \\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + w_{co} \odot c_t) \\
        h_t &= o_t \odot \tanh(c_t)

    The peephole terms ``w_c*`` are present only with ``peephole=True``; without them and with
    every other switch at its default this is exactly ``torch.nn.LSTMCell`` (same parameter
    names, gate order ``i, f, g, o``). The switches (see
    :class:`~carousel.functional.LSTMVariant`) remove gates or activations, couple the input
    and forget gates, add full gate recurrence or layer normalisation; the weight rows of a
    removed gate are not allocated, so ``weight_ih`` has ``G*H`` rows for the ``G`` gates of
    ``cell.variant.gate_names()``.

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        bias: whether to use ``bias_ih`` and ``bias_hh``.
        variant: a name from :data:`~carousel.functional.LSTM_VARIANTS` (``"NP"`` (default,
            torch.nn), ``"vanilla"`` (peepholes), ``"NIG"``, ``"NFG"``, ``"NOG"``, ``"NIAF"``,
            ``"NOAF"``, ``"CIFG"``, ``"FGR"``, ``"LN"``) or an ``LSTMVariant``.
        peephole, input_gate, forget_gate, output_gate, input_activation, output_activation,
        coupled, full_gate_recurrence, layer_norm: override single switches of ``variant``.
        ln_eps: epsilon of the layer normalisations.
        proj_size: if > 0, the output is projected to this size by ``weight_hr`` (``(P, H)``),
            as ``torch.nn.LSTM(proj_size=P)`` (Sak et al. 2014); ``h`` then has size ``P``.

    Shape:
        - x: ``(B, I)``; state: ``LSTMState(h, c)`` each ``(B, H)`` (with full gate recurrence
          ``LSTMGateState(h, c, gates)``, ``gates`` of shape ``(B, S*H)``); output ``(B, H)``.

    Raises:
        ValueError: for an unknown variant or contradictory switches (CIFG without input gate).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
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
        ln_eps: float = 1e-5,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("LSTMCell", "input_size", input_size)
        self.hidden_size = check_positive_int("LSTMCell", "hidden_size", hidden_size)
        switches = dict(
            peephole=peephole,
            input_gate=input_gate,
            forget_gate=forget_gate,
            output_gate=output_gate,
            input_activation=input_activation,
            output_activation=output_activation,
            coupled=coupled,
            full_gate_recurrence=full_gate_recurrence,
            layer_norm=layer_norm,
        )
        self.variant = resolve_variant("LSTMCell", variant, switches)
        self.bias = bool(bias)
        self.ln_eps = float(ln_eps)
        self.proj_size = check_positive_int("LSTMCell", "proj_size", proj_size, minimum=0)
        if proj_size >= hidden_size:
            raise ValueError(
                f"LSTMCell: proj_size must be smaller than hidden_size ({hidden_size}), "
                f"got {proj_size}"
            )
        P = proj_size or hidden_size
        H = hidden_size
        G = len(self.variant.gate_names())
        S = len(self.variant.recurrent_gate_names())
        kw: FactoryKwargs = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(G * H, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(G * H, P, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * H, **kw))
            self.bias_hh = nn.Parameter(torch.empty(G * H, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        for name in self.variant.peephole_names():
            self.register_parameter(name, nn.Parameter(torch.empty(H, **kw)))
        if self.variant.full_gate_recurrence:
            self.weight_gg = nn.Parameter(torch.empty(S * H, S * H, **kw))
        if self.variant.layer_norm:
            self.ln_ih_weight = nn.Parameter(torch.empty(G * H, **kw))
            self.ln_hh_weight = nn.Parameter(torch.empty(G * H, **kw))
            self.ln_c_weight = nn.Parameter(torch.empty(H, **kw))
            self.ln_c_bias = nn.Parameter(torch.empty(H, **kw))
        if proj_size:
            self.weight_hr = nn.Parameter(torch.empty(P, H, **kw))
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        """Size of ``y`` and ``h``: ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.variant.gate_names()

    def init_parameter(self, name: str, p: Tensor) -> None:
        """torch.nn's default, uniform in ``(-1/sqrt(H), 1/sqrt(H))``, for every weight, bias
        and peephole; layer-norm gains 1 and biases 0."""
        if name.startswith("ln_"):
            nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
        else:
            super().init_parameter(name, p)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        kw = self._factory(device, dtype)
        H = self.hidden_size
        h = torch.zeros(batch_size, self.output_size, **kw)
        c = torch.zeros(batch_size, H, **kw)
        if self.variant.full_gate_recurrence:
            S = len(self.variant.recurrent_gate_names())
            return LSTMGateState(h, c, torch.zeros(batch_size, S * H, **kw))
        return LSTMState(h, c)

    def step_with_params(
        self, params: dict[str, Tensor], x: Tensor, state: Any
    ) -> tuple[Tensor, Any, dict[str, Tensor]]:
        v = self.variant
        ln = None
        if v.layer_norm:
            names = ("ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")
            ln = {n: params[n] for n in names}
        return lstm_step(
            x,
            state,
            params["weight_ih"],
            params["weight_hh"],
            params.get("bias_ih"),
            params.get("bias_hh"),
            variant=v,
            peepholes={n: params[n] for n in v.peephole_names()},
            weight_gg=params.get("weight_gg"),
            ln=ln,
            ln_eps=self.ln_eps,
            weight_hr=params.get("weight_hr"),
        )

    def extra_repr(self) -> str:
        proj = f", proj_size={self.proj_size}" if self.proj_size else ""
        return f"{self.input_size}, {self.hidden_size}, variant={self.variant.acronym!r}{proj}"
