r"""The recurrent language model over characters (or words): embedding or one-hot input,
a stack of any carousel recurrent layer, dropout, and a softmax output.

.. math::

    x_t = E[w_t] \ (\text{or one-hot}(w_t)), \qquad
    h^{(1..L)}_t = \mathrm{RNN}(x_t, h_{t-1}), \qquad
    P(w_{t+1} \mid w_{\le t}) = \mathrm{softmax}(W_o h^{(L)}_t + b_o)

trained to predict the next token (Sutskever, Martens & Hinton 2011; Graves 2013; Karpathy's
char-rnn). Dropout acts on the non-recurrent connections only: the embedding, between layers
and before the output (Zaremba, Sutskever & Vinyals 2014).

Generation needs one step of the network per new token, with the state carried:
:meth:`CharLM.stepper` returns a :class:`Stepper` that does exactly that, with a fast path for
the standard LSTM, GRU and RNN that folds the embedding into the first layer's input weights
(a table lookup replaces a matrix product).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel._checks import check_choice, check_positive_int, check_probability
from carousel._config import Checks
from carousel.layers import GRU, LSTM, RNN
from carousel.layers.sequence import map_state
from carousel.models.config import ModelConfig
from carousel.models.sequence import init_model_

__all__ = ["CELLS", "CharLM", "CharLMModelConfig", "CharLMOutput", "Stepper"]

#: The recurrent layers a :class:`CharLM` can stack, by name.
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


@dataclass(frozen=True)
class CharLMModelConfig(ModelConfig):
    """The ``[model]`` table of the ``charlm`` task: :class:`~carousel.models.ModelConfig`
    (cell, sizes, variant, initialisation, ...) plus the input embedding. ``dropout`` acts on
    the embedding, between layers and before the output (Zaremba et al. 2014)."""

    # size of the learned input embedding; 0 feeds one-hot vectors (char-rnn's input)
    embedding_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        c = Checks("model")
        c.positive_int("embedding_size", self.embedding_size, minimum=0)
        if self.bidirectional:
            c.fail("bidirectional", "must be false for a language model (it would see the "
                   "token it predicts)")  # fmt: skip
        c.done()


class CharLMOutput(NamedTuple):
    """What :meth:`CharLM.forward` returns.

    Attributes:
        logits: ``(T, B, V)`` unnormalised next-token scores.
        state: the final recurrent state (the layer's state type, fields ``(L, B, H)``).
        states: with ``return_states=True``, the state after every step, fields
            ``(L, T, B, H)`` (for an LSTM, ``states.c`` holds every memory cell); else ``None``.
    """

    logits: Tensor
    state: Any
    states: Any = None


class CharLM(nn.Module):
    """A recurrent next-token language model.

    Args:
        vocab_size: ``V``, the number of token ids.
        hidden_size: ``H``, units per recurrent layer.
        num_layers: ``L``, stacked recurrent layers.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"`` (:data:`CELLS`).
        embedding_size: size of the learned input embedding; ``0`` feeds one-hot vectors of size
            ``V`` instead (char-rnn's input).
        dropout: dropout probability on the embedding, between layers and before the output.
        layer_options: keyword arguments for the recurrent layer, e.g. ``{"variant": "CIFG"}``,
            ``{"layer_norm": True}``, ``{"peephole": True}``, ``{"nonlinearity": "relu"}``,
            ``{"impl": "bptt"}`` (see :class:`carousel.LSTM`, :class:`carousel.GRU`,
            :class:`carousel.RNN`).
        device, dtype: where and in which precision the parameters live.

    Shape:
        - tokens: ``(T, B)`` int64; logits ``(T, B, V)``; state fields ``(L, B, H)``.

    Raises:
        ValueError: on invalid sizes, an unknown ``cell`` or invalid layer options.

    Example:
        >>> import torch
        >>> lm = CharLM(vocab_size=10, hidden_size=16, num_layers=2)
        >>> out = lm(torch.randint(0, 10, (7, 3)))
        >>> tuple(out.logits.shape), tuple(out.state.c.shape)
        ((7, 3, 10), (2, 3, 16))
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        *,
        cell: str = "lstm",
        embedding_size: int = 64,
        dropout: float = 0.0,
        layer_options: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = check_positive_int("CharLM", "vocab_size", vocab_size)
        self.hidden_size = check_positive_int("CharLM", "hidden_size", hidden_size)
        self.num_layers = check_positive_int("CharLM", "num_layers", num_layers)
        self.cell = check_choice("CharLM", "cell", cell, tuple(CELLS))
        self.embedding_size = check_positive_int(
            "CharLM", "embedding_size", embedding_size, minimum=0
        )
        self.dropout = check_probability("CharLM", "dropout", dropout)
        self.layer_options = dict(layer_options or {})
        for key in ("input_size", "hidden_size", "num_layers", "dropout", "batch_first"):
            if key in self.layer_options:
                raise ValueError(
                    f"CharLM: layer_options may not set {key!r}; it is a CharLM argument"
                )
        if self.layer_options.get("bidirectional"):
            raise ValueError(
                "CharLM: a language model cannot be bidirectional (it would see the token it "
                "predicts); remove bidirectional from layer_options"
            )
        if embedding_size:
            self.embedding = nn.Embedding(vocab_size, embedding_size, device=device, dtype=dtype)
            input_size = embedding_size
        else:
            self.register_module("embedding", None)
            input_size = vocab_size
        try:
            self.rnn = CELLS[cell](
                input_size,
                hidden_size,
                num_layers,
                dropout=dropout if num_layers > 1 else 0.0,
                **self.layer_options,
                device=device,
                dtype=dtype,
            )
        except TypeError as e:
            raise ValueError(f"CharLM: invalid layer_options for cell={cell!r}: {e}") from None
        out_size = getattr(self.rnn, "proj_size", 0) or hidden_size
        self.decoder = nn.Linear(out_size, vocab_size, device=device, dtype=dtype)

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        vocab_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CharLM:
        """Build a language model from a :class:`CharLMModelConfig` (or a plain
        :class:`~carousel.models.ModelConfig`, with the default embedding) and apply its
        initialisation (``config.init``, randomness from ``generator``)."""
        options: dict[str, Any] = {
            "learn_initial_state": config.learn_initial_state,
            "impl": config.impl,
        }
        if config.cell == "rnn":
            options["nonlinearity"] = config.nonlinearity
        elif config.cell == "lstm":
            options.update(variant=config.variant, proj_size=config.proj_size)
        else:
            options["reset_after"] = config.reset_after
        model = cls(
            vocab_size,
            config.hidden_size,
            config.num_layers,
            cell=config.cell,
            embedding_size=getattr(config, "embedding_size", 64),
            dropout=config.dropout,
            layer_options=options,
            device=device,
            dtype=dtype,
        )
        init_model_(model, config.init, generator=generator)
        return model

    # ------------------------------------------------------------------ sequences
    def embed(self, tokens: Tensor) -> Tensor:
        """The recurrent input for token ids: ``(*,)`` -> ``(*, E)`` (or one-hot ``(*, V)``)."""
        if self.embedding is not None:
            return self.embedding(tokens)
        return F.one_hot(tokens, self.vocab_size).to(self.decoder.weight.dtype)

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor):
            raise TypeError(f"CharLM: tokens must be a Tensor, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"CharLM: tokens must hold integer ids, got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"CharLM: expected tokens of shape (T, B), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"CharLM: token ids must lie in [0, vocab_size={self.vocab_size}), got values "
                f"from {int(tokens.min())} to {int(tokens.max())}"
            )

    def forward(
        self, tokens: Tensor, state: Any = None, *, return_states: bool = False
    ) -> CharLMOutput:
        """Next-token scores for every position of ``tokens``.

        Args:
            tokens: ``(T, B)`` token ids.
            state: the state to start from (the previous batch's final state for truncated
                BPTT; detach it first), or ``None`` for the layer's initial state.
            return_states: also return the state after every step (``output.states``).

        Returns:
            :class:`CharLMOutput`.

        Raises:
            ValueError: if ``tokens`` is not ``(T, B)`` or holds ids outside the vocabulary.
            TypeError: if ``tokens`` is not an integer tensor.
        """
        self._check_tokens(tokens)
        x = self.embed(tokens.long())  # (T, B, E)
        x = F.dropout(x, self.dropout, self.training)
        res = self.rnn(x, state, return_states=return_states)
        y = F.dropout(res.output, self.dropout, self.training)  # (T, B, H)
        return CharLMOutput(self.decoder(y), res.state, res.states)

    def initial_state(self, batch_size: int) -> Any:
        """The state at the start of a stream for ``batch_size`` rows (zeros, or the learned
        initial state), fields ``(L, B, H)``."""
        check_positive_int("CharLM", "batch_size", batch_size)
        w = self.decoder.weight
        x = torch.zeros(1, batch_size, self.rnn.cell().input_size, device=w.device, dtype=w.dtype)
        states = self.rnn._initial_states(None, batch_size, x)  # one per layer, (B, H)
        return map_state(lambda *fs: torch.stack(fs), *states)

    def stepper(
        self, batch_size: int = 1, state: Any = None, *, fast: bool | None = None
    ) -> Stepper:
        """An incremental runner: one network step per token, the state carried.

        Args:
            batch_size: rows run in parallel.
            state: the state to start from (default: the layer's initial state).
            fast: use the hand-fused step (``None``: where it applies, see :class:`Stepper`).
        """
        return Stepper(self, batch_size, state, fast=fast)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, cell={self.cell!r}, embedding_size="
            f"{self.embedding_size}, dropout={self.dropout}"
        )


def _ifo2g(t: Tensor) -> Tensor:
    """An LSTM weight or bias with its gate blocks (rows) reordered from i, f, g, o to
    i, f, o, g and the block of g doubled (exact: a power of two)."""
    i, f, g, o = t.chunk(4, 0)
    return torch.cat([i, f, o, 2.0 * g])


def _fast_kind(model: CharLM) -> str | None:
    """Which hand-fused step computes ``model.rnn`` exactly, if any."""
    rnn = model.rnn
    if isinstance(rnn, LSTM):
        return "lstm" if rnn.variant.is_standard and not rnn.proj_size and rnn.bias else None
    if isinstance(rnn, GRU):
        return "gru" if rnn.reset_after and rnn.bias else None
    if isinstance(rnn, RNN):
        return "rnn" if rnn.bias else None
    return None


class Stepper:
    """Runs a :class:`CharLM` one token at a time, carrying the state: each new token costs one
    step of the network, never a rerun of the prefix.

    For the standard LSTM, GRU and RNN (biases on, no variant switches) it uses a hand-fused
    step: the first layer's input projection of every token, ``W_ih E[w] + b_ih (+ b_hh)``, is
    precomputed as a ``(V, G*H)`` table, so a step is one table lookup and one matrix product
    per layer plus the gate arithmetic. Other configurations call the layer on one time step.
    Both give the same logits as :meth:`CharLM.forward` on the whole sequence (tested).
    Call it under ``torch.no_grad()`` or ``torch.inference_mode()``; the tables are built from
    the weights at construction, so build a new stepper after changing them.

    Args:
        model: the language model (its training mode is left as it is; use ``eval()`` for
            dropout-free generation).
        batch_size: rows.
        state: starting state, fields ``(L, B, H)``; default the model's initial state.
        fast: ``None`` uses the hand-fused step where it applies (a standard LSTM, GRU or RNN in
            eval mode); ``False`` always calls the layer; ``True`` raises where it cannot apply.

    Raises:
        ValueError: if ``fast=True`` for a configuration the fused step does not compute.

    Attributes:
        state: the current state (after the last token fed).
        fast: whether the hand-fused step is used.
    """

    def __init__(
        self, model: CharLM, batch_size: int = 1, state: Any = None, *, fast: bool | None = None
    ) -> None:
        self.model = model
        self.batch_size = check_positive_int("Stepper", "batch_size", batch_size)
        self.state = model.initial_state(batch_size) if state is None else state
        kind = _fast_kind(model) if not model.training else None
        if fast and kind is None:
            raise ValueError(
                "Stepper: fast=True needs a standard LSTM, GRU or RNN with biases, in eval mode; "
                f"this model has {model.rnn!r} (training={model.training})"
            )
        if fast is False:
            kind = None
        self.fast = kind is not None
        self._kind = kind
        if self.fast:
            self._prepare()

    def _prepare(self) -> None:
        m = self.model
        rnn = m.rnn
        with torch.no_grad():
            ids = torch.arange(m.vocab_size, device=m.decoder.weight.device)
            x = m.embed(ids)  # (V, E)
            self._w_ih: dict[int, Tensor] = {}  # layers 1, 2, ... (layer 0 reads the table)
            self._w_hh: list[Tensor] = []
            self._b: list[Tensor] = []  # b_ih, with b_hh merged in but for the GRU
            self._b_hh: list[Tensor] = []  # the GRU's b_hh (inside r * (W_hn h + b_hn))
            for layer in range(rnn.num_layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}")
                w_hh = getattr(rnn, f"weight_hh_l{layer}")
                b_ih = getattr(rnn, f"bias_ih_l{layer}")
                b_hh = getattr(rnn, f"bias_hh_l{layer}")
                if self._kind == "lstm":
                    # gate rows i, f, g, o -> i, f, o, 2g: one sigmoid over all 4H columns
                    # gives tanh(g) = 2 sigmoid(2g) - 1 too (see _lstm_step)
                    w_ih, w_hh, b_ih, b_hh = (_ifo2g(t) for t in (w_ih, w_hh, b_ih, b_hh))
                # gates from the input: W_ih x + b_ih, plus b_hh where it can be merged
                merged_b = b_ih if self._kind == "gru" else b_ih + b_hh
                if layer == 0:
                    self._table = F.linear(x, w_ih, merged_b)  # (V, G*H)
                else:
                    # transposed once, so each step's products read (in, G*H) weights
                    self._w_ih[layer] = w_ih.t().contiguous() if self._kind == "lstm" else w_ih
                self._b.append(merged_b)
                self._w_hh.append(w_hh.t().contiguous() if self._kind == "lstm" else w_hh)
                if self._kind == "gru":
                    self._b_hh.append(b_hh)

    @torch.no_grad()
    def _lstm_step(self, tokens: Tensor) -> Tensor:
        # torch's CPU tanh is several times slower than its sigmoid, so both tanh of the LSTM
        # come from sigmoids: tanh(x) = 2 sigmoid(2x) - 1 (the 2 of the cell input g is folded
        # into its weights by _prepare). The results equal the layer's to rounding (tested).
        m, st = self.model, self.state
        H = m.hidden_size
        h_next = torch.empty_like(st.h)  # (L, B, H), written layer by layer
        c_next = torch.empty_like(st.c)
        inp = st.h[0]
        for layer in range(m.num_layers):
            if layer == 0:
                gates = self._table.index_select(0, tokens)  # (B, 4H), a copy: W_ih E[w] + b
            else:
                gates = torch.addmm(self._b[layer], inp, self._w_ih[layer])  # (B, 4H)
            gates.addmm_(st.h[layer], self._w_hh[layer])  # + W_hh h
            i, f, o, s = gates.sigmoid_().split(H, 1)  # s = sigmoid(2 g)
            c = torch.mul(f, st.c[layer], out=c_next[layer])
            c.addcmul_(i, s, value=2.0).sub_(i)  # c = f c + i (2 s - 1) = f c + i tanh(g)
            h = torch.mul(c, 2.0, out=h_next[layer]).sigmoid_()
            inp = h.mul_(2.0).sub_(1.0).mul_(o)  # h = o tanh(c)
        self.state = type(st)(h_next, c_next)
        return m.decoder(inp)  # (B, V)

    def _fast_step(self, tokens: Tensor) -> Tensor:
        m, kind = self.model, self._kind
        if kind == "lstm":
            return self._lstm_step(tokens)
        st = self.state
        hs = st
        new_h: list[Tensor] = []  # new_h[-1]: the next layer's input (layer 0 reads the table)
        for layer in range(m.num_layers):
            h = hs[layer]  # (B, H)
            if kind == "gru":
                b_ih, b_hh = self._b[layer], self._b_hh[layer]
                if layer == 0:
                    gx = self._table[tokens]
                else:
                    gx = F.linear(new_h[-1], self._w_ih[layer], b_ih)
                gh = F.linear(h, self._w_hh[layer], b_hh)  # (B, 3H)
                x_r, x_z, x_n = gx.chunk(3, 1)
                h_r, h_z, h_n = gh.chunk(3, 1)
                r = torch.sigmoid(x_r + h_r)
                z = torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n)
                h = n + z * (h - n)
            else:
                if layer == 0:
                    gx = self._table[tokens]
                else:
                    gx = F.linear(new_h[-1], self._w_ih[layer], self._b[layer])
                a = torch.addmm(gx, h, self._w_hh[layer].t())
                h = torch.tanh(a) if m.rnn.nonlinearity == "tanh" else torch.relu(a)
            new_h.append(h)
        self.state = torch.stack(new_h)
        return m.decoder(new_h[-1])  # (B, V)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row and return the scores of the next.

        Args:
            tokens: ``(B,)`` token ids.

        Returns:
            ``(B, V)`` logits of the next token; :attr:`state` moves one step on.

        Raises:
            ValueError: if ``tokens`` is not ``(B,)``.
        """
        if tokens.shape != (self.batch_size,):
            raise ValueError(
                f"Stepper: expected tokens of shape ({self.batch_size},), got {tuple(tokens.shape)}"
            )
        if self.fast:
            return self._fast_step(tokens)
        out = self.model(tokens.view(1, -1), self.state)
        self.state = out.state
        return out.logits[0]

    def feed(self, tokens: Tensor) -> Tensor:
        """Feed a whole ``(T, B)`` block (e.g. the priming text) in one call of the layer and
        return the logits after its last token, ``(B, V)``: the same as ``T`` calls of
        :meth:`step`, faster."""
        out = self.model(tokens, self.state)
        self.state = out.state
        return out.logits[-1]

    def select(self, rows: Tensor) -> None:
        """Keep (and reorder or repeat) the rows ``rows`` of the state, for beam search.

        Args:
            rows: ``(B',)`` indices into the current rows; the batch size becomes ``B'``.
        """
        self.state = map_state(lambda t: t.index_select(1, rows), self.state)
        self.batch_size = rows.numel()
