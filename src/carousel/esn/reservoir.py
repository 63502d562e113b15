r"""The reservoir: a fixed random recurrent network of leaky-integrator tanh units."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from carousel._checks import check_choice, check_positive_int, check_probability, shape_str
from carousel.esn import _kernel
from carousel.esn.matrices import (
    random_matrix,
    random_stream,
    small_step_threads,
    spectral_radius,
)

__all__ = ["IMPLS", "Reservoir"]

#: Implementations of the time loop: ``"torch"`` (torch operations, any device, the reference)
#: and ``"compiled"`` (a C loop for CPU sequences, see :mod:`carousel.esn._kernel`; equal to
#: the torch path up to rounding). ``"auto"`` takes the compiled loop for one sequence on the
#: CPU (faster than torch's at every size measured, 100-5000 units, sparse and dense:
#: docs/performance.md), torch otherwise.
IMPLS = ("auto", "torch", "compiled")

#: The compiled loop splits a step between threads (torch's thread count) from this many
#: multiply-adds of the recurrent product a step (the threads meet at a barrier after each step).
COMPILED_THREADS_MIN_WORK = 2**15


def _check_nonneg_float(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float, got {type(value).__name__}")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{owner}: {name} must be a finite float >= 0, got {value}")
    return float(value)


class Reservoir(nn.Module):
    r"""A reservoir of leaky-integrator tanh units (Jaeger 2001, GMD report 148; leaky units
    from Jaeger, Lukoševičius, Popovici & Siewert 2007, Neural Networks 20(3), eq. 2.5):

    .. math::

        \tilde h_t &= \tanh\big(W_{in} u_t + W h_{t-1} + W_{fb}\, y_{t-1} + b + \nu_t\big) \\
        h_t &= (1 - a)\, h_{t-1} + a\, \tilde h_t

    with leak rate :math:`a`, input :math:`u_t`, output feedback :math:`y_{t-1}` (the previous
    output, or the teacher signal during training: teacher forcing) and optional state noise
    :math:`\nu_t \sim N(0, \sigma^2)` inside the nonlinearity, as Jaeger & Haas 2004 (SOM) add
    during training to make free-running generation stable. :math:`a = 1` is Jaeger's original
    ESN.

    Weights (all frozen buffers, never Parameters):

    - ``weight_hh`` :math:`W` ``(H, H)``: entries nonzero with probability ``connectivity``,
      values N(0, 1), then scaled so that its spectral radius is ``spectral_radius`` (exact
      eigenvalues up to 512 units, restarted Arnoldi above: see
      :func:`carousel.esn.matrices.spectral_radius`). Stored as a CSR tensor when ``sparse``.
    - ``weight_ih`` :math:`W_{in}` ``(H, I)``: U(-1, 1) times ``input_scaling``, entries kept
      with probability ``input_connectivity``.
    - ``bias`` :math:`b` ``(H,)``: U(-1, 1) times ``bias_scaling``.
    - ``weight_fb`` :math:`W_{fb}` ``(H, O)``: U(-1, 1) times ``feedback_scaling`` (only with
      ``feedback_size > 0``).

    Each matrix comes from its own named stream of ``seed``
    (:func:`carousel.esn.matrices.random_stream`), drawn on the CPU in float64 and then moved to
    ``device``/``dtype``: the same seed gives the same reservoir on every device.

    Implementation: the input, bias, feedback (teacher) and noise terms of all time steps are
    computed in one matrix product before the loop; each step then costs one matrix-vector (or
    matrix-matrix, for batches) product, one tanh and one lerp. ``forward`` runs without
    autograd.

    Args:
        input_size: ``I`` (0 for a reservoir driven only by feedback and bias).
        units: ``H``.
        spectral_radius: target largest absolute eigenvalue of ``weight_hh``.
        leak_rate: :math:`a \in (0, 1]`.
        connectivity: fraction of nonzero recurrent weights.
        input_scaling: scale of ``weight_ih``.
        input_connectivity: fraction of nonzero input weights.
        bias_scaling: scale of ``bias`` (0: no bias).
        feedback_size: ``O``, size of the fed-back output (0: no feedback).
        feedback_scaling: scale of ``weight_fb``.
        noise: standard deviation :math:`\sigma` of the state noise (used only when a
            ``noise_generator`` is passed to :meth:`forward`).
        sparse: store ``weight_hh`` as CSR. ``None`` picks sparse when
            ``connectivity <= 0.2`` and ``units >= 200`` (a fixed rule of the hyperparameters,
            so a configuration always runs the same path; the two agree to rounding).
        impl: ``"auto"``, ``"torch"`` or ``"compiled"`` (see :data:`IMPLS`): the compiled C
            loop is several times faster for small reservoirs on the CPU, where torch's
            per-operation overhead dominates, and 1.05-1.7x for large ones; it falls back to
            torch (with a logged warning) where no C compiler is available, and on other
            devices. ``"auto"`` (the default)
            takes it for one sequence on the CPU when a compiler is there (silently torch
            otherwise, and for batches, whose steps are matrix products); the two paths
            agree to rounding.
        seed: seed of the named random streams.
        device, dtype: of the buffers (default float64: chaotic time series need it).

    Shape:
        - inputs: ``(T, B, I)`` or unbatched ``(T, I)``.
        - feedback: like the inputs with ``O`` features: row ``t`` is :math:`y_{t-1}`.
        - state: ``(B, H)`` or ``(H,)``.
        - output: states ``(T, B, H)`` (or ``(T, H)``) and the final state.

    Example:
        >>> res = Reservoir(1, 50, spectral_radius=0.9, leak_rate=0.5, seed=0)
        >>> states, last = res(torch.randn(20, 1, dtype=torch.float64))
        >>> states.shape, last.shape
        (torch.Size([20, 50]), torch.Size([50]))
    """

    # the frozen weights, registered as buffers in __init__
    weight_hh: Tensor
    weight_ih: Tensor
    bias: Tensor
    weight_fb: Tensor

    def __init__(
        self,
        input_size: int,
        units: int,
        *,
        spectral_radius: float = 0.9,
        leak_rate: float = 1.0,
        connectivity: float = 0.1,
        input_scaling: float = 1.0,
        input_connectivity: float = 1.0,
        bias_scaling: float = 0.0,
        feedback_size: int = 0,
        feedback_scaling: float = 1.0,
        noise: float = 0.0,
        sparse: bool | None = None,
        impl: str = "auto",
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = "Reservoir"
        self.impl = check_choice(owner, "impl", impl, IMPLS)
        self.input_size = check_positive_int(owner, "input_size", input_size, minimum=0)
        self.units = check_positive_int(owner, "units", units)
        self.spectral_radius = _check_nonneg_float(owner, "spectral_radius", spectral_radius)
        self.leak_rate = check_probability(owner, "leak_rate", leak_rate)
        if self.leak_rate == 0.0:
            raise ValueError(
                f"{owner}: leak_rate must be in (0, 1], got 0 (the state would freeze)"
            )
        self.connectivity = check_probability(owner, "connectivity", connectivity)
        self.input_connectivity = check_probability(owner, "input_connectivity", input_connectivity)
        if self.connectivity == 0.0 or self.input_connectivity == 0.0:
            raise ValueError(f"{owner}: connectivity and input_connectivity must be > 0")
        self.input_scaling = _check_nonneg_float(owner, "input_scaling", input_scaling)
        self.bias_scaling = _check_nonneg_float(owner, "bias_scaling", bias_scaling)
        self.feedback_size = check_positive_int(owner, "feedback_size", feedback_size, minimum=0)
        self.feedback_scaling = _check_nonneg_float(owner, "feedback_scaling", feedback_scaling)
        self.noise = _check_nonneg_float(owner, "noise", noise)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{owner}: seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        if sparse is None:
            sparse = self.connectivity <= 0.2 and self.units >= 200
        self.sparse = bool(sparse)
        dtype = torch.float64 if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"{owner}: dtype must be a floating-point dtype, got {dtype}")

        H, I, O = self.units, self.input_size, self.feedback_size
        w = random_matrix(
            H,
            H,
            connectivity=self.connectivity,
            sparse=self.sparse,
            generator=random_stream(seed, "recurrent"),
        )
        radius = spectral_radius_of(w, seed)
        if radius < 1e-12:
            raise ValueError(
                f"{owner}: the random recurrent matrix has spectral radius 0 (units={H}, "
                f"connectivity={self.connectivity}); increase connectivity"
            )
        w = w * (self.spectral_radius / radius)
        self.measured_radius = radius  # radius before scaling (diagnostics)
        w_in = random_matrix(
            H,
            max(I, 1),
            connectivity=self.input_connectivity,
            distribution="uniform",
            generator=random_stream(seed, "input"),
        )[:, :I]
        bias = torch.rand(H, generator=random_stream(seed, "bias"), dtype=torch.float64) * 2 - 1
        w_fb = random_matrix(
            H, max(O, 1), distribution="uniform", generator=random_stream(seed, "feedback")
        )[:, :O]

        def place(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        self.register_buffer("weight_hh", place(w))
        self.register_buffer("weight_ih", place(w_in * self.input_scaling))
        self.register_buffer("bias", place(bias * self.bias_scaling))
        self.register_buffer("weight_fb", place(w_fb * self.feedback_scaling))

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.bias.dtype

    @property
    def device(self) -> torch.device:
        return self.bias.device

    def initial_state(self, batch_size: int | None = None) -> Tensor:
        """Zeros ``(B, H)``, or ``(H,)`` for ``batch_size=None``."""
        shape = (self.units,) if batch_size is None else (batch_size, self.units)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def _check_seq(self, name: str, x: Tensor, size: int, T: int | None, B: int | None) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"Reservoir: {name} must be a torch.Tensor, got {type(x).__name__}")
        ok = x.dim() == 3 and x.shape[2] == size
        ok = ok and (T is None or x.shape[0] == T) and (B is None or x.shape[1] == B)
        if not ok:
            want = ["T" if T is None else T, "B" if B is None else B, size]
            raise ValueError(
                f"Reservoir: expected {name} of shape {shape_str(want)} (or unbatched "
                f"{shape_str([want[0], size])}), got {shape_str(tuple(x.shape))}"
            )
        self._check_kind(name, x)

    def _check_kind(self, name: str, x: Tensor) -> None:
        if x.dtype != self.dtype or x.device != self.device:
            raise TypeError(
                f"Reservoir: {name} is {x.dtype} on {x.device} but the reservoir is "
                f"{self.dtype} on {self.device}; convert it with .to(...)"
            )

    def drive(
        self,
        inputs: Tensor | None,
        feedback: Tensor | None = None,
        *,
        steps: int | None = None,
        batch_size: int = 1,
        noise_generator: torch.Generator | None = None,
        out: Tensor | None = None,
    ) -> Tensor:
        r"""The part of the pre-activation that does not depend on the state, for all steps:
        :math:`W_{in} u_t + W_{fb} y_{t-1} + b + \nu_t`, shape ``(T, B, H)`` (batched inputs
        only), written into ``out`` where given: a ``(T, B, H)`` tensor of the reservoir's
        dtype and device whose rows of ``H`` are contiguous and evenly spaced (the first ``H``
        columns of a ``(T, B, F)`` buffer will do)."""
        T = steps if inputs is None else inputs.shape[0]
        B = batch_size if inputs is None else inputs.shape[1]
        if T is None and feedback is not None:
            T, B = feedback.shape[0], feedback.shape[1]
        if T is None:
            raise ValueError("Reservoir: give inputs, feedback or steps")
        if out is None:
            out = self.bias.expand(T, B, self.units).clone()
        else:
            self._check_out("out", out, (T, B, self.units))
            out.copy_(self.bias.expand(T, B, self.units))
        if self.input_size:
            if inputs is None:
                raise ValueError(
                    f"Reservoir: expected inputs with {self.input_size} features, got None"
                )
            out.view(T * B, -1).addmm_(inputs.reshape(T * B, -1), self.weight_ih.T)
        if feedback is not None and self.feedback_size:
            out.view(T * B, -1).addmm_(feedback.reshape(T * B, -1), self.weight_fb.T)
        if noise_generator is not None and self.noise > 0:
            nu = torch.randn(T, B, self.units, generator=noise_generator, dtype=torch.float64)
            out.add_(nu.to(out.device, out.dtype), alpha=self.noise)
        return out

    def step_work(self, batch_size: int = 1) -> int:
        """Multiply-adds of one step's recurrent product."""
        W = self.weight_hh
        nnz = W.values().numel() if W.layout == torch.sparse_csr else W.numel()
        return nnz * batch_size

    def recur(self, drive: Tensor, state: Tensor, out: Tensor | None = None) -> Tensor:
        """Run the recurrence on a precomputed drive ``(T, B, H)`` from ``state`` ``(B, H)``;
        returns all states ``(T, B, H)``, in ``out`` where given: laid out as for
        :meth:`drive` (the first ``H`` columns of a wider buffer, such as the readout's
        features, will do), and it may be ``drive`` itself (each step reads its row of the
        drive before it writes that row; ``out`` must not otherwise overlap ``drive``). Small
        steps run on one thread (:func:`carousel.esn.matrices.small_step_threads`); the
        compiled loop splits steps of at least :data:`COMPILED_THREADS_MIN_WORK`
        multiply-adds between torch's threads."""
        if out is not None:
            self._check_out("out", out, tuple(drive.shape))
        threads = torch.get_num_threads()
        if self.step_work() < COMPILED_THREADS_MIN_WORK:
            threads = 1
        with small_step_threads(self.step_work(drive.shape[1])):
            return self._recur(drive, state, threads, out)

    def _check_out(self, name: str, out: object, shape: tuple) -> None:
        """``out`` of ``shape`` ``(T, B, H)``, the reservoir's dtype and device, and rows of
        ``H`` that are contiguous and evenly spaced (a ``(T * B, H)`` view exists)."""
        if not isinstance(out, Tensor):
            raise TypeError(f"Reservoir: {name} must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != tuple(shape):
            raise ValueError(
                f"Reservoir: expected {name} of shape {shape_str(list(shape))}, got "
                f"{shape_str(tuple(out.shape))}"
            )
        self._check_kind(name, out)
        ok = shape[-1] <= 1 or out.stride(-1) == 1
        if ok:
            try:
                out.view(-1, shape[-1])
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(
                f"Reservoir: {name} must have contiguous, evenly spaced rows of {shape[-1]} "
                f"(a view of shape {shape_str([shape[0] * shape[1], shape[-1]])}), got strides "
                f"{tuple(out.stride())}"
            )

    def _recur(
        self, drive: Tensor, state: Tensor, threads: int = 1, out: Tensor | None = None
    ) -> Tensor:
        W, a = self.weight_hh, self.leak_rate
        T, B = drive.shape[0], drive.shape[1]
        compiled = (
            T > 0
            and _kernel.available(W)
            and (
                self.impl == "compiled"
                or (self.impl == "auto" and B == 1 and _kernel.load(quiet=True) is not None)
            )
        )
        if compiled:
            outs: Sequence[Tensor | None] = [None] * B if out is None else out.unbind(1)
            runs = [_kernel.recur(W, drive[:, b], state[b], a, threads, outs[b]) for b in range(B)]
            done = [r for r in runs if r is not None]
            if len(done) == B:
                if out is not None:
                    return out
                return done[0].unsqueeze(1) if B == 1 else torch.stack(done, 1)
        states = torch.empty_like(drive) if out is None else out
        if T == 0:
            return states
        if B == 1:  # matrix-vector products: the fastest path for one sequence
            h = state[0]
            pre = torch.empty_like(h)
            for d, s in zip(drive[:, 0].unbind(0), states[:, 0].unbind(0)):
                if W.layout == torch.sparse_csr:
                    pre = torch.addmv(d, W, h)
                else:
                    torch.addmv(d, W, h, out=pre)
                if a == 1.0:
                    torch.tanh(pre, out=s)
                else:
                    torch.lerp(h, pre.tanh_(), a, out=s)
                h = s
            return states
        h = state
        if W.layout == torch.sparse_csr:
            for d, s in zip(drive.unbind(0), states.unbind(0)):
                pre = torch.addmm(d.T, W, h.T).T  # (B, H)
                if a == 1.0:
                    torch.tanh(pre, out=s)
                else:
                    torch.lerp(h, pre.tanh_(), a, out=s)
                h = s
            return states
        WT = W.T
        pre = torch.empty_like(h)
        for d, s in zip(drive.unbind(0), states.unbind(0)):
            torch.addmm(d, h, WT, out=pre)  # (B, H)
            if a == 1.0:
                torch.tanh(pre, out=s)
            else:
                torch.lerp(h, pre.tanh_(), a, out=s)
            h = s
        return states

    def step(self, drive_t: Tensor, state: Tensor) -> Tensor:
        """One step from a precomputed drive ``(B, H)``; returns the new state ``(B, H)``."""
        W = self.weight_hh
        if W.layout == torch.sparse_csr:
            pre = torch.addmm(drive_t.T, W, state.T).T
        else:
            pre = torch.addmm(drive_t, state, W.T)
        return torch.lerp(state, pre.tanh_(), self.leak_rate)

    @torch.no_grad()
    def forward(
        self,
        inputs: Tensor | None,
        state: Tensor | None = None,
        *,
        feedback: Tensor | None = None,
        steps: int | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the reservoir over a sequence.

        Args:
            inputs: ``(T, B, I)`` or ``(T, I)``; ``None`` when ``input_size == 0``.
            state: initial state ``(B, H)`` (``(H,)`` unbatched); zeros if ``None``.
            feedback: teacher signal fed back, row ``t`` being :math:`y_{t-1}`; required when
                ``feedback_size > 0``.
            steps: ``T`` when there are neither inputs nor feedback.
            noise_generator: draws the state noise; no noise without it.

        Returns:
            ``(states, final_state)``: ``(T, B, H)`` and ``(B, H)`` (unbatched: ``(T, H)``,
            ``(H,)``).

        Raises:
            ValueError, TypeError: for missing or badly shaped arguments.
        """
        if self.input_size == 0 and inputs is not None:
            raise ValueError("Reservoir: input_size is 0, so inputs must be None")
        if self.input_size > 0 and inputs is None:
            raise ValueError(
                f"Reservoir: expected inputs with {self.input_size} features, got None"
            )
        if self.feedback_size > 0 and feedback is None:
            raise ValueError(
                f"Reservoir: feedback_size is {self.feedback_size}, so a feedback (teacher) "
                "sequence is required"
            )
        ref = inputs if inputs is not None else feedback
        batched = True if ref is None else ref.dim() == 3
        if ref is not None and ref.dim() not in (2, 3):
            name = "inputs" if inputs is not None else "feedback"
            raise ValueError(
                f"Reservoir: expected {name} of shape (T, B, F) or (T, F), got "
                f"{shape_str(tuple(ref.shape))}"
            )
        if not batched:
            inputs = None if inputs is None else inputs.unsqueeze(1)
            feedback = None if feedback is None else feedback.unsqueeze(1)
            state = None if state is None else state.unsqueeze(0)
        T: int | None = None
        B: int | None = None
        if inputs is not None:
            self._check_seq("inputs", inputs, self.input_size, None, None)
            T, B = inputs.shape[0], inputs.shape[1]
        if feedback is not None:
            self._check_seq("feedback", feedback, self.feedback_size, T, B)
            T, B = feedback.shape[0], feedback.shape[1]
        if T is None or B is None:  # both None or both set
            if steps is None:
                raise ValueError("Reservoir: give steps when there are no inputs or feedback")
            T = check_positive_int("Reservoir", "steps", steps, minimum=0)
            B = 1 if state is None else state.shape[0]
        if state is None:
            state = self.initial_state(B)
        elif state.shape != (B, self.units):
            raise ValueError(
                f"Reservoir: expected state of shape {shape_str([B, self.units])}, got "
                f"{shape_str(tuple(state.shape))}"
            )
        drive = self.drive(inputs, feedback, steps=T, batch_size=B, noise_generator=noise_generator)
        states = self.recur(drive, state.to(self.dtype), out=drive)  # in place: no second buffer
        final = states[-1] if T > 0 else state
        if not batched:
            return states[:, 0], final[0]
        return states, final

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.units}, spectral_radius={self.spectral_radius}, "
            f"leak_rate={self.leak_rate}, connectivity={self.connectivity}, "
            f"feedback_size={self.feedback_size}, sparse={self.sparse}, impl={self.impl!r}"
        )


def spectral_radius_of(w: Tensor, seed: int) -> float:
    """Spectral radius of a freshly drawn recurrent matrix (exact when small, else Arnoldi with
    the ``"arnoldi"`` stream of ``seed``)."""
    return spectral_radius(w, method="auto", generator=random_stream(seed, "arnoldi"))
