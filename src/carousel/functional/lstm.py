"""One time step of the LSTM family: the torch.nn cell and the variants of Greff et al. 2017.

Every variant is a combination of the switches of :class:`LSTMVariant`. The step is written once,
here; the cells, the reference loop and the tests all call it, and the hand-written BPTT in
:mod:`carousel.bptt` is checked against it.

Gate order in the stacked weight rows follows torch.nn (``i, f, g, o``) with the rows of absent
gates left out: a cell without an input gate (NIG) has rows ``f, g, o``; a cell without a forget
gate (NFG) or with a coupled input-forget gate (CIFG) has rows ``i, g, o``; without an output gate
(NOG) rows ``i, f, g``. :meth:`LSTMVariant.gate_names` gives the order for any variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LSTM_VARIANTS",
    "LSTMGateState",
    "LSTMState",
    "LSTMVariant",
    "lstm_step",
]


class LSTMState(NamedTuple):
    """State of an LSTM: hidden output ``h`` and memory cell ``c``, each ``(..., B, H)``."""

    h: Tensor
    c: Tensor


class LSTMGateState(NamedTuple):
    """State of an LSTM with full gate recurrence (FGR).

    Besides ``h`` and ``c`` it carries the previous step's sigmoid-gate activations ``gates``
    (``(..., B, G*H)``, the gates of :meth:`LSTMVariant.recurrent_gate_names` in order), which
    feed every gate at the next step.
    """

    h: Tensor
    c: Tensor
    gates: Tensor


@dataclass(frozen=True)
class LSTMVariant:
    """Switches that select one member of the LSTM family (Greff et al. 2017, Table 1).

    The default is torch.nn's LSTM (no peepholes: Greff's "NP"). Each switch departs from it:

    Attributes:
        peephole: diagonal peephole connections (Gers & Schmidhuber 2000): the input and forget
            gates see ``c_{t-1}``, the output gate sees ``c_t``. Weights ``weight_ci``,
            ``weight_cf``, ``weight_co`` (one per present gate).
        input_gate: ``False`` is Greff's NIG: ``i_t = 1``.
        forget_gate: ``False`` is Greff's NFG, the original 1997 cell: ``f_t = 1``.
        output_gate: ``False`` is Greff's NOG: ``o_t = 1``.
        input_activation: ``False`` is Greff's NIAF: ``g_t`` is the identity of its input.
        output_activation: ``False`` is Greff's NOAF: ``h_t = o_t * c_t``.
        coupled: Greff's CIFG: ``f_t = 1 - i_t`` (no forget-gate weights).
        full_gate_recurrence: Greff's FGR: the sigmoid gates at ``t-1`` feed all sigmoid
            gates at ``t`` through the extra matrix ``weight_gg`` (the state then carries the
            gates: :class:`LSTMGateState`).
        layer_norm: Ba et al. 2016's layer-normalised LSTM: the input and recurrent projections
            are each normalised over their gate rows and scaled by ``ln_ih_weight`` /
            ``ln_hh_weight``; the output reads ``tanh(LN(c_t))`` with ``ln_c_weight``,
            ``ln_c_bias``; the recurrence keeps the unnormalised ``c_t``.
    """

    peephole: bool = False
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_activation: bool = True
    output_activation: bool = True
    coupled: bool = False
    full_gate_recurrence: bool = False
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if self.full_gate_recurrence and not (
            self.input_gate or self.has_forget_weights or self.output_gate
        ):
            raise ValueError(
                "LSTMVariant: full_gate_recurrence=True (FGR) connects the sigmoid gates to "
                "each other, but input_gate, forget_gate and output_gate are all off"
            )
        if self.coupled and not self.input_gate:
            raise ValueError(
                "LSTMVariant: coupled=True (CIFG, f = 1 - i) needs the input gate, "
                "got input_gate=False"
            )
        if self.coupled and not self.forget_gate:
            raise ValueError(
                "LSTMVariant: coupled=True (CIFG) replaces the forget gate by 1 - i; "
                "leave forget_gate=True (got False)"
            )

    @property
    def is_standard(self) -> bool:
        """True for torch.nn's LSTM (every switch at its default)."""
        return self == LSTMVariant()

    @property
    def has_forget_weights(self) -> bool:
        return self.forget_gate and not self.coupled

    def gate_names(self) -> tuple[str, ...]:
        """Names of the gate blocks in the stacked weight rows, in order."""
        names = []
        if self.input_gate:
            names.append("i")
        if self.has_forget_weights:
            names.append("f")
        names.append("g")
        if self.output_gate:
            names.append("o")
        return tuple(names)

    def recurrent_gate_names(self) -> tuple[str, ...]:
        """Sigmoid gates that take part in full gate recurrence, in order."""
        return tuple(n for n in self.gate_names() if n != "g")

    def peephole_names(self) -> tuple[str, ...]:
        """Names of the peephole weight vectors (``weight_c{gate}``), in order."""
        if not self.peephole:
            return ()
        return tuple("weight_c" + n for n in self.recurrent_gate_names())

    @property
    def acronym(self) -> str:
        """Greff et al.'s name for a single-switch variant, else a '+'-joined description."""
        parts = []
        if self.peephole:
            parts.append("P")
        if not self.input_gate:
            parts.append("NIG")
        if not self.forget_gate:
            parts.append("NFG")
        if not self.output_gate:
            parts.append("NOG")
        if not self.input_activation:
            parts.append("NIAF")
        if not self.output_activation:
            parts.append("NOAF")
        if self.coupled:
            parts.append("CIFG")
        if self.full_gate_recurrence:
            parts.append("FGR")
        if self.layer_norm:
            parts.append("LN")
        return "+".join(parts) if parts else "NP"


#: The named variants: Greff et al. 2017's eight (``vanilla`` is their peephole LSTM; ``NP``
#: is torch.nn's), plus ``LN`` (Ba et al. 2016).
LSTM_VARIANTS: dict[str, LSTMVariant] = {
    "NP": LSTMVariant(),
    "vanilla": LSTMVariant(peephole=True),
    "NIG": LSTMVariant(peephole=True, input_gate=False),
    "NFG": LSTMVariant(peephole=True, forget_gate=False),
    "NOG": LSTMVariant(peephole=True, output_gate=False),
    "NIAF": LSTMVariant(peephole=True, input_activation=False),
    "NOAF": LSTMVariant(peephole=True, output_activation=False),
    "CIFG": LSTMVariant(peephole=True, coupled=True),
    "FGR": LSTMVariant(peephole=True, full_gate_recurrence=True),
    "LN": LSTMVariant(layer_norm=True),
}


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def lstm_step(
    x: Tensor,
    state: LSTMState | LSTMGateState,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    variant: LSTMVariant = LSTMVariant(),
    peepholes: dict[str, Tensor] | None = None,
    weight_gg: Tensor | None = None,
    ln: dict[str, Tensor] | None = None,
    ln_eps: float = 1e-5,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, LSTMState | LSTMGateState, dict[str, Tensor]]:
    r"""One step of an LSTM-family cell.

    .. math::

        a_t &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}
              \quad[+\, W_{gg}\, s_{t-1} \text{ on the sigmoid gates, FGR}] \\
        i_t &= \sigma(a^i_t + w_{ci} \odot c_{t-1}) \qquad
        f_t = \sigma(a^f_t + w_{cf} \odot c_{t-1}) \qquad
        g_t = \tanh(a^g_t) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t &= \sigma(a^o_t + w_{co} \odot c_t) \qquad
        h_t = o_t \odot \tanh(c_t)

    with the departures of ``variant`` (see :class:`LSTMVariant`). With ``layer_norm`` the two
    projections are normalised separately, ``a_t = LN(W_{ih} x_t) \gamma_{ih} + LN(W_{hh}
    h_{t-1}) \gamma_{hh} + b_{ih} + b_{hh}`` and ``h_t = o_t \tanh(LN(c_t)\gamma_c + \beta_c)``
    (Ba et al. 2016, Sec. 3.1).

    Args:
        x: input ``(B, I)``.
        state: ``LSTMState(h, c)`` or, with full gate recurrence, ``LSTMGateState``.
        weight_ih: ``(G*H, I)`` for the ``G`` gates of ``variant.gate_names()``.
        weight_hh: ``(G*H, H)``.
        bias_ih, bias_hh: ``(G*H,)`` or ``None``.
        variant: which member of the family.
        peepholes: ``{"weight_ci": (H,), ...}`` for ``variant.peephole_names()``.
        weight_gg: ``(S*H, S*H)`` for the ``S`` sigmoid gates (FGR only).
        ln: ``{"ln_ih_weight", "ln_hh_weight": (G*H,), "ln_c_weight", "ln_c_bias": (H,)}``.
        ln_eps: layer-norm epsilon.
        weight_hr: ``(P, H)`` projection of the output (Sak et al. 2014, torch.nn's
            ``proj_size``): ``h_t = W_{hr} (o_t \odot \tanh(c_t))`` has size ``P``.

    Returns:
        ``(h_t, new_state, gates)`` where ``gates`` maps each present gate name to its
        activation ``(B, H)``.
    """
    h_prev, c_prev = state[0], state[1]
    H = c_prev.shape[-1]
    if variant.layer_norm and ln is None:
        raise TypeError("lstm_step: a layer_norm variant needs ln= (its four weights), got None")
    if variant.full_gate_recurrence:
        if weight_gg is None:
            raise TypeError("lstm_step: a full_gate_recurrence variant needs weight_gg, got None")
        if not isinstance(state, LSTMGateState):
            raise TypeError(
                "lstm_step: a full_gate_recurrence variant needs state=LSTMGateState(h, c, "
                f"gates), got {type(state).__name__}"
            )
    if variant.layer_norm and ln is not None:  # (checked above)
        ln_c_weight, ln_c_bias = ln["ln_c_weight"], ln["ln_c_bias"]  # for c_t, below
        a = _layer_norm(F.linear(x, weight_ih), ln["ln_ih_weight"], None, ln_eps)
        a = a + _layer_norm(F.linear(h_prev, weight_hh), ln["ln_hh_weight"], None, ln_eps)
        if bias_ih is not None:
            a = a + bias_ih
        if bias_hh is not None:
            a = a + bias_hh
    else:
        a = F.linear(x, weight_ih, bias_ih) + F.linear(h_prev, weight_hh, bias_hh)
    names = variant.gate_names()
    blocks = dict(zip(names, a.split(H, dim=-1)))
    if variant.full_gate_recurrence and isinstance(state, LSTMGateState) and weight_gg is not None:
        rec = F.linear(state.gates, weight_gg).split(H, dim=-1)
        for name, r in zip(variant.recurrent_gate_names(), rec):
            blocks[name] = blocks[name] + r
    peep = peepholes or {}

    one = None
    gates: dict[str, Tensor] = {}
    if variant.input_gate:
        pre_i = blocks["i"]
        if variant.peephole:
            pre_i = pre_i + peep["weight_ci"] * c_prev
        i = torch.sigmoid(pre_i)
        gates["i"] = i
    else:
        one = torch.ones_like(c_prev)
        i = one
    if variant.coupled:
        f = 1.0 - i
        gates["f"] = f
    elif variant.forget_gate:
        pre_f = blocks["f"]
        if variant.peephole:
            pre_f = pre_f + peep["weight_cf"] * c_prev
        f = torch.sigmoid(pre_f)
        gates["f"] = f
    else:
        f = None  # NFG: f = 1
    g = torch.tanh(blocks["g"]) if variant.input_activation else blocks["g"]
    gates["g"] = g
    c = (c_prev if f is None else f * c_prev) + i * g
    if variant.output_gate:
        pre_o = blocks["o"]
        if variant.peephole:
            pre_o = pre_o + peep["weight_co"] * c
        o = torch.sigmoid(pre_o)
        gates["o"] = o
    else:
        o = None
    c_out = _layer_norm(c, ln_c_weight, ln_c_bias, ln_eps) if variant.layer_norm else c
    act = torch.tanh(c_out) if variant.output_activation else c_out
    h = act if o is None else o * act
    if weight_hr is not None:
        h = F.linear(h, weight_hr)
    if variant.full_gate_recurrence:
        sig = torch.cat([gates[n] for n in variant.recurrent_gate_names()], dim=-1)
        return h, LSTMGateState(h, c, sig), gates
    return h, LSTMState(h, c), gates
