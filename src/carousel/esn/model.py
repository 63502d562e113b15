r"""The echo state network: a reservoir, a trained linear readout, open- and closed-loop use."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict, overload

import numpy as np
import torch
from torch import Tensor, nn

from carousel._checks import check_choice, check_positive_int, check_probability, shape_str
from carousel.esn.matrices import SMALL_CHUNK_WORK, random_stream, small_step_threads
from carousel.esn.readout import RidgeReadout, RLSReadout, _check_ridge
from carousel.esn.reservoir import Reservoir

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch.distributed import ProcessGroup

__all__ = ["READOUTS", "ESNOutput", "ESNState", "EchoStateNetwork"]

#: Readout training rules: closed-form ridge, teacher-forced RLS, FORCE (RLS on own feedback).
READOUTS = ("ridge", "rls", "force")


class _ReservoirKwargs(TypedDict):
    """The :class:`Reservoir` arguments an :class:`EchoStateNetwork` keeps until it builds."""

    spectral_radius: float
    leak_rate: float
    connectivity: float
    input_scaling: float
    input_connectivity: float
    bias_scaling: float
    feedback_scaling: float
    noise: float
    sparse: bool | None
    impl: str
    seed: int


class ESNState(NamedTuple):
    """The state an echo state network carries between calls.

    Attributes:
        h: reservoir state ``(B, H)`` (``(H,)`` unbatched).
        y: the last output ``(B, O)``: the teacher's last value after training or
            teacher-forced runs, the network's own last output otherwise. It is the next
            step's feedback and, in autoregressive generation, the next input.
    """

    h: Tensor
    y: Tensor


class ESNOutput(NamedTuple):
    """``(outputs, state)`` of :meth:`EchoStateNetwork.forward`: outputs ``(T, B, O)``
    (``(B, T, O)`` with ``batch_first``; ``(T, O)`` unbatched) and the final
    :class:`ESNState`."""

    outputs: Tensor
    state: ESNState


class EchoStateNetwork(nn.Module):
    r"""An echo state network (Jaeger 2001; Jaeger & Haas 2004, Science 304:78): a fixed random
    :class:`~carousel.esn.Reservoir` and a linear readout, the only trained part (lecture 7d:
    "learn only the hidden-to-output weights").

    .. math::

        h_t = (1 - a) h_{t-1} + a \tanh(W_{in} u_t + W h_{t-1} + W_{fb} y_{t-1} + b), \qquad
        y_t = W_{out} [h_t; u_t] + b_{out}

    (:math:`u_t` enters the readout only with ``input_to_readout``; :math:`W_{fb}` exists only
    with ``feedback``). Training (:meth:`fit`) runs the reservoir over the inputs with the
    teacher fed back (teacher forcing), drops the first ``washout`` steps of each sequence, and
    fits the readout by ridge regression from accumulated sums (:class:`RidgeReadout`: the data
    streams through in chunks of ``chunk_size`` steps, so memory does not grow with ``T``), or
    online by RLS/FORCE (:class:`RLSReadout`). :meth:`generate` then runs in closed loop: each
    output is fed back (``feedback``) and/or used as the next input (autoregressive, when there
    are as many inputs as outputs).

    The reservoir and readout are built at the first :meth:`fit` from the data's sizes (or at
    construction if ``input_size`` and ``output_size`` are given); the same ``seed`` gives the
    same reservoir. Inputs may be tensors or NumPy arrays; they are converted to the network's
    ``dtype`` (float64 by default) and ``device``.

    Args:
        units: reservoir size ``H``.
        spectral_radius: of the recurrent matrix.
        leak_rate: :math:`a \in (0, 1]`.
        ridge: :math:`\lambda` of the ridge readout.
        input_scaling, input_connectivity, connectivity, bias_scaling, noise, sparse, impl:
            see :class:`~carousel.esn.Reservoir`. ``noise`` is applied during training only;
            ``impl="compiled"`` runs the reservoir's time loop in compiled C on the CPU;
            ``"auto"`` (the default) does for small reservoirs.
        feedback: feed the output back into the reservoir.
        feedback_scaling: scale of the feedback weights.
        input_to_readout: give the readout the input as well as the reservoir state.
        readout: ``"ridge"`` (closed form), ``"rls"`` (online, teacher forced) or ``"force"``
            (online, the network's own output fed back: Sussillo & Abbott 2009).
        rls_alpha, rls_forgetting: :class:`RLSReadout`'s :math:`\alpha` and :math:`\mu`.
        input_size, output_size: build eagerly with these sizes (``input_size=0``: no input,
            the reservoir is driven by feedback and bias only).
        batch_first: sequences are ``(B, T, F)`` instead of ``(T, B, F)``.
        chunk_size: time steps per chunk when streaming data into the ridge sums.
        seed: seed of the reservoir's named random streams (and of the training noise).
        device, dtype: of the network (float64 by default).

    Shape:
        - inputs: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``.
        - targets and outputs: likewise with ``O`` features.

    Example:
        >>> from carousel.tasks.timeseries import mackey_glass
        >>> x = mackey_glass(600)
        >>> esn = EchoStateNetwork(units=100, spectral_radius=1.25, leak_rate=0.3, ridge=1e-5)
        >>> _ = esn.fit(x[:499], x[1:500], washout=100)
        >>> esn.generate(steps=10).shape
        torch.Size([10, 1])
    """

    def __init__(
        self,
        units: int,
        *,
        spectral_radius: float = 0.9,
        leak_rate: float = 1.0,
        ridge: float = 1e-6,
        input_scaling: float = 1.0,
        input_connectivity: float = 1.0,
        connectivity: float = 0.1,
        bias_scaling: float = 0.0,
        feedback: bool = False,
        feedback_scaling: float = 1.0,
        noise: float = 0.0,
        input_to_readout: bool = False,
        readout: str = "ridge",
        rls_alpha: float = 1.0,
        rls_forgetting: float = 1.0,
        sparse: bool | None = None,
        impl: str = "auto",
        input_size: int | None = None,
        output_size: int | None = None,
        batch_first: bool = False,
        chunk_size: int = 1024,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = "EchoStateNetwork"
        self.units = check_positive_int(owner, "units", units)
        self.ridge = _check_ridge(owner, ridge)
        self.readout_kind = check_choice(owner, "readout", readout, READOUTS)
        self.feedback = bool(feedback)
        if self.readout_kind == "force" and not self.feedback:
            raise ValueError(
                f"{owner}: readout='force' needs feedback=True (FORCE trains the "
                "readout while the network's own output is fed back)"
            )
        self.input_to_readout = bool(input_to_readout)
        self.batch_first = bool(batch_first)
        self.chunk_size = check_positive_int(owner, "chunk_size", chunk_size)
        self.rls_alpha = rls_alpha
        self.rls_forgetting = rls_forgetting
        self.seed = seed
        self.device_ = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype_ = torch.float64 if dtype is None else dtype
        self._reservoir_kwargs: _ReservoirKwargs = {
            "spectral_radius": spectral_radius,
            "leak_rate": leak_rate,
            "connectivity": connectivity,
            "input_scaling": input_scaling,
            "input_connectivity": input_connectivity,
            "bias_scaling": bias_scaling,
            "feedback_scaling": feedback_scaling,
            "noise": noise,
            "sparse": sparse,
            "impl": impl,
            "seed": seed,
        }
        self.reservoir: Reservoir | None = None
        self.readout: RidgeReadout | RLSReadout | None = None
        #: The state after the last :meth:`fit` (where :meth:`generate` continues by default).
        self.last_state: ESNState | None = None
        self._noise_generator: torch.Generator | None = None
        if (input_size is None) != (output_size is None):
            raise ValueError(f"{owner}: give both input_size and output_size, or neither")
        if input_size is not None and output_size is not None:
            self.build(input_size, output_size)
        else:
            # Validate the reservoir hyperparameters now rather than at the first fit.
            check_probability(owner, "connectivity", connectivity)
            if connectivity == 0:
                raise ValueError(f"{owner}: connectivity must be > 0")
            probe: _ReservoirKwargs = {
                **self._reservoir_kwargs,
                "sparse": False,
                "connectivity": 1.0,
            }
            Reservoir(1, 1, **probe)

    # ------------------------------------------------------------------ construction
    @property
    def is_built(self) -> bool:
        return self.reservoir is not None

    def build(self, input_size: int, output_size: int) -> None:
        """Create the reservoir and readout for ``input_size`` inputs and ``output_size``
        outputs (done by the first :meth:`fit`)."""
        owner = "EchoStateNetwork"
        check_positive_int(owner, "input_size", input_size, minimum=0)
        check_positive_int(owner, "output_size", output_size)
        if input_size == 0 and not self.feedback:
            raise ValueError(
                f"{owner}: input_size=0 needs feedback=True (nothing drives the "
                "reservoir otherwise)"
            )
        device, dtype = self.device_, self.dtype_
        reservoir = Reservoir(
            input_size,
            self.units,
            feedback_size=output_size if self.feedback else 0,
            **self._reservoir_kwargs,
            device=device,
            dtype=dtype,
        )
        features = self.units + (input_size if self.input_to_readout else 0)
        readout: RidgeReadout | RLSReadout
        if self.readout_kind == "ridge":
            readout = RidgeReadout(
                features, output_size, ridge=self.ridge, device=device, dtype=dtype
            )
        else:
            readout = RLSReadout(
                features,
                output_size,
                alpha=self.rls_alpha,
                forgetting=self.rls_forgetting,
                device=device,
                dtype=dtype,
            )
        # all or nothing: a readout that rejects its arguments (rls_alpha, rls_forgetting are
        # checked here) leaves the network unbuilt, not with a reservoir and no readout
        self.reservoir, self.readout = reservoir, readout
        self.input_size, self.output_size = input_size, output_size

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load a fitted network's ``state_dict`` into an unbuilt one too: it is first built
        with the sizes the saved weights have (``torch.nn`` loads into the submodules after
        this)."""
        w_ih = state_dict.get(prefix + "reservoir.weight_ih")
        w_out = state_dict.get(prefix + "readout.weight")  # ridge; RLS: weight_aug
        if w_out is None:
            w_out = state_dict.get(prefix + "readout.weight_aug")
        if not self.is_built and isinstance(w_ih, Tensor) and isinstance(w_out, Tensor):
            self.build(int(w_ih.shape[1]), int(w_out.shape[0]))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _require_built(self, what: str) -> tuple[Reservoir, RidgeReadout | RLSReadout]:
        """The reservoir and readout; a RuntimeError naming ``what`` before the first fit."""
        if self.reservoir is None or self.readout is None:
            raise RuntimeError(
                f"EchoStateNetwork.{what}: call fit() first (the network is "
                "built from the training data's sizes)"
            )
        return self.reservoir, self.readout

    def _parts(self) -> tuple[Reservoir, RidgeReadout | RLSReadout]:
        """The reservoir and readout, for the steps that run after the public method that
        calls them has built the network or checked that it is built."""
        assert self.reservoir is not None and self.readout is not None, "not built"
        return self.reservoir, self.readout

    # ------------------------------------------------------------------ data handling
    def _as_seq(
        self, name: str, x: Tensor | npt.ArrayLike | None, size: int | None
    ) -> tuple[Tensor, bool]:
        """To ``(T, B, F)`` in the network's dtype/device; returns (tensor, batched)."""
        if x is None:
            raise ValueError(f"EchoStateNetwork: {name} is required")
        if not isinstance(x, Tensor):
            try:
                x = torch.as_tensor(x)
            except Exception as exc:
                raise TypeError(
                    f"EchoStateNetwork: {name} must be a tensor or array, got {type(x).__name__}"
                ) from exc
        if x.dim() not in (2, 3):
            layout = "(B, T, F)" if self.batch_first else "(T, B, F)"
            raise ValueError(
                f"EchoStateNetwork: expected {name} of shape {layout} or (T, F), got "
                f"{shape_str(tuple(x.shape))}"
                + (" (add a feature dimension: x.unsqueeze(-1))" if x.dim() == 1 else "")
            )
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"EchoStateNetwork: {name} must be numeric, got {x.dtype}")
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if size is not None and x.shape[2] != size:
            raise ValueError(
                f"EchoStateNetwork: expected {name} with {size} features, got "
                f"{x.shape[2]} (shape {shape_str(tuple(x.shape))})"
            )
        x = x.to(device=self.device_, dtype=self.dtype_)
        if not bool(torch.isfinite(x).all()):
            bad = int(torch.nonzero(~torch.isfinite(x))[0, 0])
            raise ValueError(f"EchoStateNetwork: {name} contains NaN or inf (first at step {bad})")
        return x, batched

    def _out_layout(self, y: Tensor, batched: bool) -> Tensor:
        if not batched:
            return y[:, 0]
        return y.transpose(0, 1) if self.batch_first else y

    def _state_in(self, state: ESNState | None, B: int, batched: bool) -> ESNState:
        res, _ = self._parts()
        if state is None:
            zeros_y = torch.zeros(B, self.output_size, device=res.device, dtype=res.dtype)
            return ESNState(res.initial_state(B), zeros_y)
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError("EchoStateNetwork: state must be an ESNState(h, y)")
        h, y = state
        if not batched or h.dim() == 1:
            h, y = h.reshape(1, -1), y.reshape(1, -1)
        if h.shape != (B, self.units) or y.shape != (B, self.output_size):
            raise ValueError(
                f"EchoStateNetwork: expected state h {shape_str([B, self.units])} and y "
                f"{shape_str([B, self.output_size])}, got {shape_str(tuple(h.shape))} and "
                f"{shape_str(tuple(y.shape))}"
            )
        return ESNState(h.to(res.bias), y.to(res.bias))

    @staticmethod
    def _state_out(state: ESNState, batched: bool) -> ESNState:
        return state if batched else ESNState(state.h[0], state.y[0])

    def _features(self, h: Tensor, u: Tensor | None) -> Tensor:
        if self.input_to_readout and self.input_size:
            assert u is not None, "a network with inputs is run on inputs"
            return torch.cat([h, u], -1)
        return h

    @staticmethod
    def _check_washout(washout: int, T: int) -> int:
        washout = check_positive_int("EchoStateNetwork", "washout", washout, minimum=0)
        if washout >= T:
            raise ValueError(
                f"EchoStateNetwork: washout={washout} leaves no training steps out of T={T}; "
                "use a longer sequence or a shorter washout"
            )
        return washout

    def _prepare_fit(
        self,
        inputs: Tensor | npt.ArrayLike | None,
        targets: Tensor | npt.ArrayLike,
        washout: int | None = None,
    ) -> tuple[Tensor | None, Tensor, bool]:
        y, batched = self._as_seq("targets", targets, getattr(self, "output_size", None))
        if washout is not None:
            self._check_washout(washout, y.shape[0])
        if inputs is None:
            u = None
            in_size = 0
        else:
            u, batched_u = self._as_seq("inputs", inputs, getattr(self, "input_size", None))
            if batched_u != batched or u.shape[:2] != y.shape[:2]:
                raise ValueError(
                    f"EchoStateNetwork: inputs and targets must have the same time and batch "
                    f"sizes, got {shape_str(tuple(torch.as_tensor(inputs).shape))} and "
                    f"{shape_str(tuple(torch.as_tensor(targets).shape))}"
                )
            in_size = u.shape[2]
        if not self.is_built:
            self.build(in_size, y.shape[2])
        elif inputs is None and self.input_size:
            raise ValueError(
                f"EchoStateNetwork: expected inputs with {self.input_size} features, got None"
            )
        return u, y, batched

    # ------------------------------------------------------------------ training
    def fit(
        self,
        inputs: Tensor | npt.ArrayLike | None,
        targets: Tensor | npt.ArrayLike,
        *,
        washout: int = 0,
        state: ESNState | None = None,
        distributed: bool = False,
        group: ProcessGroup | None = None,
    ) -> EchoStateNetwork:
        """Train the readout on ``inputs -> targets`` with teacher forcing.

        With the ridge readout the reservoir states stream into the sums chunk by chunk and
        the readout is solved once at the end; with ``distributed=True`` the sums are first
        all-reduced over ``group`` (every process passes its shard of the data; all get the
        same readout). With ``readout="rls"``/``"force"`` the readout is updated online at
        every step after the washout.

        Args:
            inputs: ``(T, B, I)`` (see Shape), or a list of sequences ``(T_i, I)`` (tensors
                or arrays) of any lengths, as reservoirpy takes them; ``None`` for a
                feedback-only network.
            targets: ``(T, B, O)``: ``targets[t]`` is the desired output after ``inputs[t]``;
                a list of ``(T_i, O)`` with a list of inputs. Each sequence of a list starts
                from the zero state; the readout is solved once from all of them.
            washout: initial steps of each sequence not used for training.
            state: initial :class:`ESNState` (zeros if ``None``; one sequence only).
            distributed: all-reduce the ridge sums with ``torch.distributed``.
            group: the process group (default: the world).

        Returns:
            ``self``; the final state is kept in :attr:`last_state` for :meth:`generate`.

        Raises:
            ValueError, TypeError: for bad shapes, sizes, NaN/inf data or a washout that
                leaves no data.
        """
        pairs = _sequence_pairs(inputs, targets, ("inputs", "targets"))
        if pairs is None:
            pairs = [(inputs, targets)]
        elif state is not None:
            raise ValueError(
                "EchoStateNetwork: state is for one sequence; each of a list of sequences "
                "starts from the zero state"
            )
        prepared = [self._prepare_fit(u, y, washout) for u, y in pairs]
        res, readout = self._parts()
        if distributed and not isinstance(readout, RidgeReadout):  # readout="ridge"
            raise ValueError("EchoStateNetwork: distributed=True needs readout='ridge'")
        self._noise_generator = random_stream(self.seed, "noise") if res.noise else None
        readout.reset()
        for u, y, batched in prepared:
            st = self._state_in(state, y.shape[1], batched)
            if isinstance(readout, RidgeReadout):
                st = self._accumulate(readout, u, y, washout, st)
            else:
                st = self._fit_online(readout, u, y, washout, st)
        if isinstance(readout, RidgeReadout):
            if distributed:
                readout.all_reduce(group)
            readout.solve()
        self.last_state = self._state_out(st, batched)
        return self

    def partial_fit(
        self,
        inputs: Tensor | npt.ArrayLike | None,
        targets: Tensor | npt.ArrayLike,
        *,
        washout: int = 0,
        state: ESNState | None = None,
    ) -> ESNState:
        """Add one chunk of a (possibly endless) stream to the ridge sums without solving.

        Call it on consecutive chunks, passing each call's returned state to the next (and
        ``washout`` only on the first), then :meth:`solve`. Equivalent to one :meth:`fit` on
        the concatenated data (tested).

        Returns:
            The state after the chunk.
        """
        if self.readout_kind != "ridge":
            raise ValueError("EchoStateNetwork.partial_fit: needs readout='ridge'")
        u, y, batched = self._prepare_fit(inputs, targets)
        washout = check_positive_int("EchoStateNetwork", "washout", washout, minimum=0)
        readout = self._ridge_readout("partial_fit")
        st = self._state_in(state, y.shape[1], batched)
        if self._noise_generator is None and self._parts()[0].noise:
            self._noise_generator = random_stream(self.seed, "noise")
        st = self._accumulate(readout, u, y, washout, st)
        out = self._state_out(st, batched)
        self.last_state = out
        return out

    def solve(self, ridge: float | None = None) -> EchoStateNetwork:
        """Solve the ridge readout from the sums accumulated by :meth:`partial_fit` (or refit
        with another ``ridge`` after :meth:`fit`). Returns ``self``."""
        self._ridge_readout("solve").solve(ridge)
        return self

    def _ridge_readout(self, what: str) -> RidgeReadout:
        """The ridge readout; a RuntimeError before the first fit, a ValueError naming ``what``
        for the online readouts."""
        _, readout = self._require_built(what)
        if not isinstance(readout, RidgeReadout):
            raise ValueError(f"EchoStateNetwork.{what}: needs readout='ridge'")
        return readout

    def _teacher_feedback(self, y: Tensor, y_prev: Tensor) -> Tensor:
        """Feedback rows ``y_{t-1}``: the previous state's output, then the targets."""
        return torch.cat([y_prev.unsqueeze(0), y[:-1]], 0)

    def _small_call(self, batch_size: int) -> AbstractContextManager[None]:
        """One torch thread for a whole call whose chunks are small (see
        :func:`~carousel.esn.matrices.small_step_threads`)."""
        features = self._parts()[1].in_features
        work = self.chunk_size * batch_size * features * features
        return small_step_threads(work, limit=SMALL_CHUNK_WORK)

    @torch.no_grad()
    def _accumulate(
        self, readout: RidgeReadout, u: Tensor | None, y: Tensor, washout: int, st: ESNState
    ) -> ESNState:
        with self._small_call(y.shape[1]):
            return self._accumulate_chunks(readout, u, y, washout, st)

    def _accumulate_chunks(
        self, readout: RidgeReadout, u: Tensor | None, y: Tensor, washout: int, st: ESNState
    ) -> ESNState:
        res, _ = self._parts()
        T, B = y.shape[0], y.shape[1]
        h, y_prev = st
        fb_all = self._teacher_feedback(y, y_prev) if self.feedback else None
        # one buffer for the features of a chunk, reused by every chunk: the drive goes into
        # its first H columns and the reservoir turns it into the states in place, beside the
        # inputs (no concatenation). Fresh buffers for each chunk faulted 16-24 MB of new pages
        # in at 1000 units under glibc's default thresholds: 5-20% of a one-thread fit.
        n = min(T, self.chunk_size)
        feats_buf = torch.empty(n, B, readout.in_features, dtype=res.dtype, device=res.device)
        # a float32 reservoir's features are summed in float64: converted into a buffer too
        acc_dtype = readout.accumulate_dtype
        conv_buf = None if acc_dtype == res.dtype else torch.empty_like(feats_buf, dtype=acc_dtype)
        for start in range(0, T, self.chunk_size):
            stop = min(T, start + self.chunk_size)
            uc = None if u is None else u[start:stop]
            fb = None if fb_all is None else fb_all[start:stop]
            feats = feats_buf[: stop - start]
            drive = res.drive(
                uc,
                fb,
                steps=stop - start,
                batch_size=B,
                noise_generator=self._noise_generator,
                out=feats[..., : res.units],
            )
            states = res.recur(drive, h, out=drive)  # (t, B, H), in place
            if feats.shape[-1] > res.units:  # the inputs go to the readout too
                assert uc is not None, "a network with inputs is trained on inputs"
                feats[..., res.units :].copy_(uc)
            h = states[-1].clone()
            skip = max(0, washout - start)
            if skip < stop - start:
                x = feats[skip:]
                if conv_buf is not None:
                    x = conv_buf[skip : stop - start].copy_(x)
                readout.accumulate(
                    x.reshape(-1, x.shape[-1]), y[start + skip : stop].reshape(-1, y.shape[2])
                )
        return ESNState(h, y[-1].clone())

    @torch.no_grad()
    def _fit_online(
        self, readout: RLSReadout, u: Tensor | None, y: Tensor, washout: int, st: ESNState
    ) -> ESNState:
        res, _ = self._parts()
        T, B = y.shape[0], y.shape[1]
        h, y_prev = st
        force = self.readout_kind == "force"
        if not force:
            fb = self._teacher_feedback(y, y_prev) if self.feedback else None
            drive = res.drive(u, fb, steps=T, batch_size=B, noise_generator=self._noise_generator)
            states = res.recur(drive, h, out=drive)
            with small_step_threads(readout.precision.numel()):
                for t in range(washout, T):
                    feats = self._features(states[t], None if u is None else u[t])
                    readout.update(feats, y[t])
            return ESNState(states[-1].clone(), y[-1].clone())
        base = res.drive(u, None, steps=T, batch_size=B, noise_generator=self._noise_generator)
        with small_step_threads(res.step_work(B)):
            return self._force_loop(readout, u, y, washout, base, h, y_prev)

    def _force_loop(
        self,
        readout: RLSReadout,
        u: Tensor | None,
        y: Tensor,
        washout: int,
        base: Tensor,
        h: Tensor,
        y_prev: Tensor,
    ) -> ESNState:
        res, _ = self._parts()
        T = y.shape[0]
        out = y_prev
        for t in range(T):
            # FORCE: the fed-back signal is the network's own output (the teacher's during the
            # washout), and the readout learns while it is in the loop.
            h = res.step(torch.addmm(base[t], out, res.weight_fb.T), h)
            feats = self._features(h, None if u is None else u[t])
            if t >= washout:
                readout.update(feats, y[t])
                out = readout(feats)
            else:
                out = y[t]
        return ESNState(h, y[-1].clone())

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def forward(
        self,
        inputs: Tensor | npt.ArrayLike | None,
        state: ESNState | None = None,
        *,
        teacher: Tensor | npt.ArrayLike | None = None,
    ) -> ESNOutput:
        """Run the trained network over ``inputs`` (open loop: the inputs are given).

        Without feedback, or with a ``teacher`` sequence (teacher forcing: ``teacher[t]`` is
        fed back after step ``t``), all states are computed in one pass and read out at once.
        With feedback and no teacher, the network's own outputs are fed back step by step.

        Args:
            inputs: ``(T, B, I)`` (see Shape); ``None`` for feedback-only networks (then
                ``teacher`` gives ``T``).
            state: initial :class:`ESNState` (zeros if ``None``).
            teacher: ``(T, B, O)`` signal fed back instead of the outputs.

        Returns:
            :class:`ESNOutput` ``(outputs, state)``; no side effects on the network.
        """
        self._require_built("forward")
        u = t_seq = None
        if inputs is not None:
            u, batched = self._as_seq("inputs", inputs, self.input_size)
        if teacher is not None:
            t_seq, batched_t = self._as_seq("teacher", teacher, self.output_size)
            if u is not None and (batched_t != batched or t_seq.shape[:2] != u.shape[:2]):
                raise ValueError(
                    "EchoStateNetwork: inputs and teacher must have the same time and batch sizes"
                )
            batched = batched_t
        ref = u if u is not None else t_seq
        if ref is None:
            raise ValueError(
                "EchoStateNetwork: expected inputs (or a teacher for a "
                "feedback-only network), got None"
            )
        if u is None and self.input_size:
            raise ValueError(
                f"EchoStateNetwork: expected inputs with {self.input_size} features, got None"
            )
        with self._small_call(ref.shape[1]):
            return self._forward(u, t_seq, state, batched)

    def _forward(
        self, u: Tensor | None, t_seq: Tensor | None, state: ESNState | None, batched: bool
    ) -> ESNOutput:
        res, readout = self._parts()
        ref = u if u is not None else t_seq
        assert ref is not None, "forward checks that inputs or a teacher is given"
        T, B = ref.shape[0], ref.shape[1]
        st = self._state_in(state, B, batched)
        if not self.feedback or t_seq is not None:
            fb = (
                self._teacher_feedback(t_seq, st.y)
                if (self.feedback and t_seq is not None)
                else None
            )
            drive = res.drive(u, fb, steps=T, batch_size=B)
            states = res.recur(drive, st.h, out=drive)  # in place: no second (T, B, H) buffer
            out = readout(self._features(states, u))
            h = states[-1] if T else st.h
            y_last = (t_seq[-1] if t_seq is not None else out[-1]) if T else st.y
            return ESNOutput(
                self._out_layout(out, batched), self._state_out(ESNState(h, y_last), batched)
            )
        out, final = self._loop(T, st, u)
        return ESNOutput(self._out_layout(out, batched), self._state_out(final, batched))

    @overload
    def predict(
        self,
        inputs: list[Tensor] | list[np.ndarray],
        state: None = None,
        *,
        teacher: list[Tensor] | list[np.ndarray] | None = None,
    ) -> list[Tensor]: ...
    @overload
    def predict(
        self,
        inputs: Tensor | npt.ArrayLike | None,
        state: ESNState | None = None,
        *,
        teacher: Tensor | npt.ArrayLike | None = None,
    ) -> Tensor: ...
    def predict(
        self,
        inputs: Tensor | npt.ArrayLike | None,
        state: ESNState | None = None,
        *,
        teacher: Tensor | npt.ArrayLike | None = None,
    ) -> Tensor | list[Tensor]:
        """The outputs of :meth:`forward` only. Given a list of sequences (tensors or arrays
        of any lengths, as reservoirpy takes them; ``teacher`` a list too, if given), a list
        of their outputs, each sequence from the zero state."""
        pairs: list[tuple[Any, Any]] | None  # (teacher, inputs) per sequence
        if inputs is not None:
            pairs = _sequence_pairs(teacher, inputs, ("teacher", "inputs"))
        elif teacher is not None:  # a feedback-only network
            by_teacher = _sequence_pairs(None, teacher, ("inputs", "teacher"))
            pairs = None if by_teacher is None else [(t, None) for _, t in by_teacher]
        else:
            pairs = None
        if pairs is None:
            return self.forward(inputs, state, teacher=teacher).outputs
        if state is not None:
            raise ValueError(
                "EchoStateNetwork: state is for one sequence; each of a list of sequences "
                "starts from the zero state"
            )
        return [self.forward(u, teacher=t).outputs for t, u in pairs]

    def _loop(
        self, steps: int, st: ESNState, u: Tensor | None, autoregressive: bool = False
    ) -> tuple[Tensor, ESNState]:
        """Step by step with the own output fed back (and as next input if autoregressive)."""
        with small_step_threads(self._parts()[0].step_work(st.h.shape[0])):
            return self._loop_steps(steps, st, u, autoregressive)

    def _loop_steps(
        self, steps: int, st: ESNState, u: Tensor | None, autoregressive: bool
    ) -> tuple[Tensor, ESNState]:
        res, readout = self._parts()
        h, y = st
        B = h.shape[0]
        outs = torch.empty(steps, B, self.output_size, dtype=h.dtype, device=h.device)
        # Combined weight on the previous output: feedback and/or autoregressive input.
        w_prev = None
        if self.feedback:
            w_prev = res.weight_fb
        if autoregressive:
            w_prev = res.weight_ih if w_prev is None else w_prev + res.weight_ih
        base = None
        if u is not None:
            base = res.drive(u, None, steps=steps, batch_size=B)
        for t in range(steps):
            d = base[t] if base is not None else res.bias.expand(B, -1)
            if w_prev is not None:
                d = torch.addmm(d, y, w_prev.T)
            h = res.step(d, h)
            u_t = y if autoregressive else (None if u is None else u[t])
            y = readout(self._features(h, u_t))
            outs[t] = y
        return outs, ESNState(h, y)

    @torch.no_grad()
    def generate(
        self,
        steps: int,
        state: ESNState | None = None,
        *,
        inputs: Tensor | npt.ArrayLike | None = None,
    ) -> Tensor:
        """Closed-loop generation: the network runs on its own predictions.

        Starting from ``state`` (default: :attr:`last_state`, the end of training), each step
        feeds the previous output ``y`` back through the feedback weights (``feedback=True``)
        and, when no ``inputs`` are given and the network has as many inputs as outputs, also
        as the next input (autoregressive: ``targets[t] = inputs[t + 1]``). The first step uses
        ``state.y``, which after :meth:`fit` is the last target, so the forecast continues the
        target series: ``forecast[k]`` estimates the value ``k + 1`` steps after the last
        target.

        Args:
            steps: number of steps to generate.
            state: where to start (e.g. the state of a teacher-forced :meth:`forward` over a
                warm-up sequence).
            inputs: ``(steps, B, I)`` exogenous inputs for networks whose inputs are not their
                outputs.

        Returns:
            ``(steps, B, O)`` (``(steps, O)`` for an unbatched state; ``batch_first`` swaps).

        Raises:
            RuntimeError: before :meth:`fit` with no ``state``.
            ValueError: if the network needs inputs that are not given.
        """
        self._require_built("generate")
        steps = check_positive_int("EchoStateNetwork.generate", "steps", steps, minimum=0)
        if state is None:
            if self.last_state is None:
                raise RuntimeError("EchoStateNetwork.generate: call fit() first or pass a state")
            state = self.last_state
        batched = state.h.dim() == 2
        u = None
        autoregressive = False
        if inputs is not None:
            u, batched_u = self._as_seq("inputs", inputs, self.input_size)
            if u.shape[0] != steps:
                raise ValueError(
                    f"EchoStateNetwork.generate: inputs must have steps={steps} "
                    f"time steps, got {u.shape[0]}"
                )
            batched = batched_u
        elif self.input_size:
            if self.input_size != self.output_size:
                raise ValueError(
                    f"EchoStateNetwork.generate: the network has {self.input_size} inputs and "
                    f"{self.output_size} outputs, so its outputs cannot be its next inputs; "
                    "pass inputs=(steps, B, I)"
                )
            autoregressive = True
        B = state.h.shape[0] if state.h.dim() == 2 else 1
        st = self._state_in(state, B, batched)
        out, _ = self._loop(steps, st, u, autoregressive)
        return self._out_layout(out, batched)

    def extra_repr(self) -> str:
        return (
            f"units={self.units}, readout={self.readout_kind!r}, ridge={self.ridge}, "
            f"feedback={self.feedback}, input_to_readout={self.input_to_readout}"
        )


def _is_sequence_list(x: Any) -> bool:
    """A list (or tuple) of sequences, each a tensor or an array: reservoirpy's way of giving
    several sequences (of any lengths). A nested list of numbers is one array."""
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(e, (Tensor, np.ndarray)) for e in x)
    )


def _sequence_pairs(
    first: Any, second: Any, names: tuple[str, str]
) -> list[tuple[Any, Any]] | None:
    """``first`` and ``second`` (the optional one, then the one each call needs: inputs and
    targets, teacher and inputs; ``names`` theirs) paired sequence by sequence when they are
    lists of sequences; ``None`` when they are one (batched) sequence."""
    listed = _is_sequence_list(second)
    if first is None:
        return [(None, x) for x in second] if listed else None
    if listed != _is_sequence_list(first):
        raise TypeError(
            f"EchoStateNetwork: {names[0]} and {names[1]} must both be lists of sequences, or "
            f"neither; got {names[0]} {type(first).__name__} and {names[1]} "
            f"{type(second).__name__}"
        )
    if not listed:
        return None
    if len(first) != len(second):
        raise ValueError(
            f"EchoStateNetwork: expected as many {names[0]} as {names[1]} sequences "
            f"({len(second)}), got {len(first)}"
        )
    return list(zip(first, second))
