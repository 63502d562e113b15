r"""Hessian-free optimisation (Martens 2010) with structural damping for recurrent networks
(Martens & Sutskever 2011), as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from carousel._checks import check_choice, check_positive_int
from carousel.optim.cg import conjugate_gradient
from carousel.optim.curvature import MATCHING_LOSSES, GaussNewton, model_function

__all__ = ["PRECONDITIONERS", "HFDiagnostics", "HessianFree"]

logger = logging.getLogger(__name__)

#: Diagonal preconditioners of the conjugate-gradient solve (``None`` for none).
PRECONDITIONERS = ("gauss_newton",)

# Levenberg-Marquardt thresholds on the reduction ratio (Martens 2010, section 4.1).
_RHO_LOW, _RHO_HIGH = 0.25, 0.75
# Armijo line search along the chosen CG iterate (Martens & Sutskever 2012, section 8.8;
# Martens' released code): sufficient-decrease constant, shrink factor, most tries.
_LS_C, _LS_SHRINK, _LS_TRIES = 1e-2, 0.8, 60


@dataclass(frozen=True)
class HFDiagnostics:
    """What one :meth:`HessianFree.step` did.

    Attributes:
        step: number of steps taken so far, this one included.
        loss: the closure's loss before the update (without weight decay).
        new_loss: the closure's loss at the new parameters (equal to ``loss`` when the
            update was rejected).
        damping: the Tikhonov damping :math:`\\lambda` used in this step.
        next_damping: :math:`\\lambda` after the Levenberg-Marquardt adjustment.
        reduction_ratio: :math:`\\rho`, actual over predicted reduction of the objective for
            the chosen CG iterate (``nan`` when the predicted reduction is zero).
        predicted_reduction: :math:`q(p) - q(0)` of the damped quadratic model CG minimised.
        cg_iterations: conjugate-gradient iterations.
        cg_stop: why CG stopped (see :class:`~carousel.optim.CGResult`).
        cg_iterate: the iteration whose iterate CG-backtracking chose.
        step_size: :math:`\\alpha` from the line search (1.0 without it; 0.0 when the update
            was rejected).
        grad_norm: norm of the gradient (with weight decay).
        update_norm: norm of the parameter change :math:`\\alpha p`.
        closure_evaluations: calls of the closure in this step.
        curvature_rows: output rows :math:`N` of the curvature mini-batch.
        seconds: wall time of the step.
    """

    step: int
    loss: float
    new_loss: float
    damping: float
    next_damping: float
    reduction_ratio: float
    predicted_reduction: float
    cg_iterations: int
    cg_stop: str
    cg_iterate: int
    step_size: float
    grad_norm: float
    update_norm: float
    closure_evaluations: int
    curvature_rows: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for metrics logs)."""
        return asdict(self)


def _find_recurrent_layers(model: nn.Module) -> tuple[nn.Module, ...]:
    """Outermost carousel or torch.nn recurrent layers in ``model``."""
    from carousel.layers.recurrent import RecurrentBase

    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, (RecurrentBase, nn.RNNBase)) and not any(
            name.startswith(prefix + ".") or prefix == "" for prefix, _ in found
        ):
            found.append((name, m))
    return tuple(m for _, m in found)


def _detach_tree(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_detach_tree(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_detach_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach_tree(v) for k, v in x.items()}
    return x


class HessianFree(torch.optim.Optimizer):
    r"""Hessian-free (truncated Newton) optimisation with the Gauss-Newton matrix, for
    recurrent networks with structural damping.

    Each :meth:`step` (Martens 2010, Algorithm 1; Martens & Sutskever 2011, sections 3-4):

    1. evaluates the loss :math:`f(\theta)` and its gradient :math:`g` with the closure;
    2. minimises the damped quadratic model

       .. math::

           q(p) = g^\top p + \tfrac12 p^\top \bigl(G + \lambda I
                  + \tfrac{\mu\lambda}{N} J_S^\top J_S\bigr) p

       by preconditioned conjugate gradient (:func:`~carousel.optim.conjugate_gradient`),
       where :math:`G = J^\top H_L J` is the Gauss-Newton matrix of the matching loss on a
       *curvature mini-batch* (products through ``torch.func.jvp``/``vjp``, see
       :class:`~carousel.optim.GaussNewton`), :math:`\lambda` the Tikhonov damping and
       :math:`\mu` the structural damping (a penalty :math:`\frac{\mu\lambda}{2N}\lVert\Delta
       h\rVert^2` on the change of every hidden state :math:`h`; Martens & Sutskever 2011,
       section 3.2, with the squared distance as :math:`D`). CG starts from :math:`\zeta`
       times the previous step's last CG iterate (``cg_decay``, section 4.5 of Martens 2010),
       is preconditioned by :math:`M = (\operatorname{diag}(G) + \lambda)^{\xi}` (section 4.7,
       with :math:`\operatorname{diag}(G)` estimated as in Chapelle & Erhan 2011, which needs
       no per-case gradients), and stops by Martens' relative-progress rule (section 4.4);
    3. backtracks over the CG iterates stored at iterations :math:`\lceil 1.3^j\rceil`,
       evaluating :math:`f` from the last one backwards while it decreases (section 4.6);
    4. adapts :math:`\lambda` by the reduction ratio :math:`\rho = (f(\theta + p) -
       f(\theta)) / (q(p) - q(0))` of the damped model :math:`q` that CG minimised (as
       Martens' released code does; :math:`q(p) - q(0)` is CG's own objective): :math:`\lambda
       \leftarrow \lambda \cdot` ``damping_factor`` if :math:`\rho < 1/4`, :math:`\lambda
       \leftarrow \lambda /` ``damping_factor`` if :math:`\rho > 3/4` (Levenberg-Marquardt,
       section 4.1);
    5. optionally shrinks the step :math:`\alpha p` by an Armijo line search (:math:`\alpha
       \leftarrow 0.8\alpha`, sufficient decrease :math:`10^{-2}\alpha g^\top p`, at most 60
       tries, else the update is rejected), and sets :math:`\theta \leftarrow \theta + \alpha p`.

    **The model and the closure.** The curvature needs the network as a function of its
    parameters, so the optimizer is given ``model``: ``model(*inputs)`` must return the
    tensor :math:`z` the loss is computed from, *before* the output non-linearity, of shape
    ``(..., O)``, and the closure's loss must be the matching loss of ``loss``
    (:func:`~carousel.optim.matching_loss`: ``F.cross_entropy`` over the last dim,
    ``F.mse_loss`` or ``F.binary_cross_entropy_with_logits``, mean reduction) on the same
    outputs. As for ``torch.optim.LBFGS``, the closure zeroes the gradients, computes the loss
    on the gradient mini-batch, calls ``backward()`` and returns the loss; it is called once
    for the gradient and again (with the parameters set to candidate points) for
    backtracking and the line search, where only its value is used. The curvature
    mini-batch is ``curvature_inputs`` of :meth:`step`, or, if not given, the inputs of the
    closure's last ``model(...)`` call. The model must be composable with ``torch.func``
    (carousel layers switch to their autograd reference path under ``torch.func``
    transforms) and deterministic (no dropout).

    **Cost.** A CG iteration is one ``jvp`` (which recomputes the forward pass) and one reverse
    pass on the curvature batch. In torch 2.13, ``jvp`` runs products and sums between a
    transformed tensor and a Python scalar or a constant tensor through Python reference
    implementations, about 100x slower than the kernels: write custom cells with operations
    between parameters and activations, or ``torch.lerp``/``torch.addmm``, where speed matters.

    All state (:math:`\lambda`, the step count, the warm-start direction) lives in
    ``self.state``, so ``state_dict()``/``load_state_dict()`` resume a run exactly; the
    random vectors of the preconditioner are drawn from ``seed`` and the step count.

    Args:
        params: the parameters to optimise (one group; all must be parameters of ``model``).
        model: the network (keyword-only, required).
        loss: the matching loss, one of :data:`~carousel.optim.MATCHING_LOSSES`.
        damping: the initial Tikhonov damping :math:`\lambda > 0`.
        structural_damping: :math:`\mu \ge 0` (Martens & Sutskever 2011 used 1/30).
        structural_modules: the submodules whose outputs are the hidden states :math:`h` of
            structural damping; default: the outermost carousel and torch.nn recurrent layers
            of ``model`` (their output sequence, i.e. the top layer's hidden states).
        output_fn: maps ``model(...)``'s return value to the output tensor :math:`z` the loss
            sees (``None``: the return value is that tensor), e.g. ``lambda r: r.output`` for
            a carousel layer or ``lambda o: o[-1]`` for the last step; it must be a function
            of the return value alone and is applied inside the ``torch.func`` transforms.
        max_cg_iter: most CG iterations per step (Martens: 250).
        cg_tol: :math:`\varepsilon` of the CG stopping rule (Martens: 5e-4).
        cg_decay: :math:`\zeta` of the warm start, in ``[0, 1]`` (Martens: 0.95).
        preconditioner: ``"gauss_newton"`` or ``None``.
        preconditioner_exponent: :math:`\xi` (Martens: 0.75).
        preconditioner_samples: random vectors for the diagonal estimate per step.
        damping_factor: the Levenberg-Marquardt factor, ``> 1`` (Martens: 3/2).
        line_search: run the Armijo line search after backtracking.
        weight_decay: L2 penalty :math:`\frac{w}{2}\lVert\theta\rVert^2` added to the
            objective, its gradient and its curvature.
        seed: seed of the preconditioner's random vectors.

    Raises:
        TypeError: for a missing or wrong ``model`` or wrong argument types.
        ValueError: for out-of-range values, several parameter groups, options this
            optimizer does not know, parameters that are not ``model``'s, or structural
            damping without recurrent layers.

    Example:
        >>> import torch, carousel
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.rnn = carousel.RNN(2, 8, impl="reference")
        ...         self.out = torch.nn.Linear(8, 1)
        ...     def forward(self, x):
        ...         return self.out(self.rnn(x)[0][-1])  # (B, 1) at the last step
        >>> net = Net()
        >>> x, y = torch.randn(10, 64, 2), torch.randn(64, 1)
        >>> opt = carousel.optim.HessianFree(
        ...     net.parameters(), model=net, loss="mse", structural_damping=0.03)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(net(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure, curvature_inputs=x[:, :16])
        >>> opt.last_diagnostics.step
        1
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        model: nn.Module,
        loss: str = "cross_entropy",
        damping: float = 1.0,
        structural_damping: float = 0.0,
        structural_modules: Sequence[nn.Module] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        max_cg_iter: int = 250,
        cg_tol: float = 5e-4,
        cg_decay: float = 0.95,
        preconditioner: str | None = "gauss_newton",
        preconditioner_exponent: float = 0.75,
        preconditioner_samples: int = 1,
        damping_factor: float = 1.5,
        line_search: bool = True,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "HessianFree: model must be the nn.Module whose outputs the loss sees (the "
                "Gauss-Newton products need the network as a function of its parameters), "
                f"got {type(model).__name__}"
            )
        self._model = model
        defaults = {
            "loss": loss,
            "damping": damping,
            "structural_damping": structural_damping,
            "max_cg_iter": max_cg_iter,
            "cg_tol": cg_tol,
            "cg_decay": cg_decay,
            "preconditioner": preconditioner,
            "preconditioner_exponent": preconditioner_exponent,
            "preconditioner_samples": preconditioner_samples,
            "damping_factor": damping_factor,
            "line_search": line_search,
            "weight_decay": weight_decay,
            "seed": seed,
        }
        _check_options(defaults)
        super().__init__(params, defaults)
        group = self.param_groups[0]
        names = {id(p): n for n, p in model.named_parameters()}
        self._names: list[str] = []
        ref = group["params"][0]
        for k, p in enumerate(group["params"]):
            if id(p) not in names:
                raise ValueError(
                    f"HessianFree: parameter {k} of shape {tuple(p.shape)} is not a parameter "
                    "of model; pass model.parameters() (or a subset of them)"
                )
            if not p.requires_grad:
                raise ValueError(f"HessianFree: parameter {names[id(p)]!r} does not require grad")
            if p.is_complex() or not p.is_floating_point():
                raise TypeError(
                    f"HessianFree: parameter {names[id(p)]!r} must be real floating point, "
                    f"got {p.dtype}"
                )
            if p.dtype != ref.dtype or p.device != ref.device:
                raise TypeError(
                    "HessianFree: all parameters must share one dtype and device, got "
                    f"{ref.dtype} on {ref.device} and {p.dtype} on {p.device} "
                    f"({names[id(p)]!r})"
                )
            self._names.append(names[id(p)])
        if structural_modules is None:
            modules = _find_recurrent_layers(model) if group["structural_damping"] > 0 else ()
        else:
            modules = tuple(structural_modules)
            inside = {id(m) for m in model.modules()}
            for m in modules:
                if not isinstance(m, nn.Module) or id(m) not in inside:
                    raise ValueError(
                        "HessianFree: structural_modules must be submodules of model, got "
                        f"{type(m).__name__}"
                    )
        if group["structural_damping"] > 0 and not modules:
            raise ValueError(
                f"HessianFree: structural_damping={group['structural_damping']} needs hidden "
                "states, but model has no carousel or torch.nn recurrent layer; pass "
                "structural_modules=[...] (modules returning hidden states)"
            )
        self._structural_modules = modules
        self.output_fn = output_fn
        self.last_diagnostics: HFDiagnostics | None = None

    @property
    def output_fn(self) -> Callable[[Any], Tensor] | None:
        """The map from ``model(...)``'s return value to the loss's outputs; may be replaced
        between steps (the training loop sets one per batch, selecting its scored outputs)."""
        return self._output_fn

    @output_fn.setter
    def output_fn(self, fn: Callable[[Any], Tensor] | None) -> None:
        if fn is not None and not callable(fn):
            raise TypeError(f"HessianFree: output_fn must be callable, got {type(fn).__name__}")
        self._output_fn = fn

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add the (only) parameter group.

        Raises:
            ValueError: for a second group (the Gauss-Newton system couples all parameters,
                so per-group settings cannot be honoured) or for options HessianFree does not
                know (``lr``, ``momentum``, ...).
        """
        if getattr(self, "param_groups", None):
            raise ValueError(
                "HessianFree: supports exactly one parameter group (one Gauss-Newton system "
                "couples all parameters, so per-group settings cannot be honoured); got a "
                "second group. Pass all parameters in one list."
            )
        unknown = sorted(set(param_group) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(
                f"HessianFree: parameter group option(s) {unknown} are not used by "
                f"HessianFree; known options: {sorted(self.defaults)}"
            )
        super().add_param_group(param_group)
        _check_options(self.param_groups[-1])

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params()])

    def _flat_grad(self) -> Tensor:
        return torch.cat(
            [
                p.grad.detach().reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                for p in self._params()
            ]
        )

    def _set_flat(self, flat: Tensor) -> None:
        i = 0
        with torch.no_grad():
            for p in self._params():
                n = p.numel()
                p.copy_(flat[i : i + n].view_as(p))
                i += n

    def _loss_value(self, loss: Any, step: int, where: str) -> float:
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"HessianFree: the closure must return a scalar loss, got shape "
                    f"{tuple(loss.shape)}"
                )
            value = float(loss.detach())
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            value = float(loss)
        else:
            raise TypeError(
                f"HessianFree: the closure must return the loss (a scalar tensor), got "
                f"{type(loss).__name__}"
            )
        if not math.isfinite(value) and where == "before the update":
            raise FloatingPointError(
                f"HessianFree: the loss is {value} at step {step} ({where}); check the data "
                "and the model's outputs"
            )
        return value

    def _curvature_call(
        self, captured: dict[str, Any], curvature_inputs: Any, curvature_kwargs: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if curvature_inputs is None:
            if "args" not in captured:
                raise ValueError(
                    "HessianFree: the closure never called model(...), so there are no inputs "
                    "for the curvature; pass step(closure, curvature_inputs=...)"
                )
            args, kwargs = captured["args"], dict(captured["kwargs"] or {})
            if curvature_kwargs is not None:
                kwargs.update(curvature_kwargs)
        else:
            args = curvature_inputs if isinstance(curvature_inputs, tuple) else (curvature_inputs,)
            kwargs = dict(curvature_kwargs or {})
        return _detach_tree(tuple(args)), _detach_tree(kwargs)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(  # type: ignore[override]  # the closure is required, and two more arguments
        self,
        closure: Callable[[], Tensor],
        curvature_inputs: Any = None,
        curvature_kwargs: dict[str, Any] | None = None,
    ) -> Tensor:
        """Take one Hessian-free step.

        Args:
            closure: zeroes the gradients, computes the loss on the gradient mini-batch,
                calls ``backward()`` and returns the loss (as for ``torch.optim.LBFGS``).
            curvature_inputs: the positional input(s) of ``model`` for the curvature
                mini-batch (a tensor or a tuple); ``None`` reuses those of the closure's last
                ``model(...)`` call (the whole gradient batch).
            curvature_kwargs: keyword inputs of ``model`` for the curvature mini-batch (with
                ``curvature_inputs=None`` they update the captured ones).

        Returns:
            The loss the closure returned before the update (as ``LBFGS.step``).
            :attr:`last_diagnostics` holds an :class:`HFDiagnostics` of the step, which is
            also logged (logger ``carousel.optim.hessian_free``, level INFO).

        Raises:
            TypeError: without a closure, or if it does not return a scalar.
            FloatingPointError: if the loss is not finite before the update.
            ValueError: if no curvature inputs can be found or the model's outputs do not
                fit ``loss``.
        """
        if not callable(closure):
            raise TypeError(
                "HessianFree.step: needs a closure that zeroes the gradients, computes the "
                "loss, calls backward() and returns the loss"
            )
        start = time.perf_counter()
        group = self.param_groups[0]
        params = self._params()
        state = self.state[params[0]]
        step_no = int(state.get("step", 0)) + 1
        lam = float(state.get("damping", group["damping"]))
        mu, wd = float(group["structural_damping"]), float(group["weight_decay"])

        # 1. loss and gradient on the gradient mini-batch; capture the model's inputs
        captured: dict[str, Any] = {}

        def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["args"], captured["kwargs"] = args, kwargs

        handle = (
            self._model.register_forward_pre_hook(capture, with_kwargs=True)
            if curvature_inputs is None
            else None
        )
        try:
            with torch.enable_grad():
                orig_loss = closure()
        finally:
            if handle is not None:
                handle.remove()
        evaluations = 1
        f_loss = self._loss_value(orig_loss, step_no, "before the update")
        theta = self._flat_params().clone()
        g = self._flat_grad()
        f0 = f_loss
        if wd:
            g = g + wd * theta
            f0 += 0.5 * wd * float(theta.dot(theta))
        if not bool(torch.isfinite(g).all()):
            raise FloatingPointError(
                f"HessianFree: the gradient has non-finite entries at step {step_no}"
            )

        # 2. the damped Gauss-Newton operator on the curvature mini-batch
        args, kwargs = self._curvature_call(captured, curvature_inputs, curvature_kwargs)
        fn = model_function(
            self._model,
            args,
            kwargs,
            self._structural_modules,
            owner="HessianFree",
            output_fn=self._output_fn,
        )
        gn = GaussNewton(
            fn,
            {n: p for n, p in zip(self._names, params)},
            loss=group["loss"],
            damping=lam,
            structural_weight=mu * lam,
            weight_decay=wd,
            owner="HessianFree",
        )

        # 3. diagonal preconditioner (Martens 2010, section 4.7)
        precond = None
        if group["preconditioner"] == "gauss_newton":
            gen = torch.Generator(device=theta.device)
            gen.manual_seed((int(group["seed"]) * 1_000_003 + step_no) % (2**63))
            diag = gn.diagonal_estimate(gen, int(group["preconditioner_samples"]))
            precond = (diag + lam).pow(float(group["preconditioner_exponent"]))

        # 4. CG from the decayed previous solution (Martens 2010, section 4.5)
        x0 = None
        if "cg_direction" in self.state[params[0]]:
            x0 = group["cg_decay"] * torch.cat(
                [self.state[p]["cg_direction"].reshape(-1) for p in params]
            )
        res = conjugate_gradient(
            gn,
            -g,
            x0,
            preconditioner=precond,
            max_iter=int(group["max_cg_iter"]),
            tol=float(group["cg_tol"]),
        )

        def objective(x: Tensor) -> float:
            nonlocal evaluations
            point = theta + x
            self._set_flat(point)
            with torch.enable_grad():
                value = self._loss_value(closure(), step_no, "at a candidate point")
            evaluations += 1
            if wd:
                value += 0.5 * wd * float(point.dot(point))
            return value if math.isfinite(value) else math.inf

        # 5. CG-backtracking: from the last stored iterate backwards while f decreases (4.6)
        iterates = res.iterates
        best = len(iterates) - 1
        f_best = objective(iterates[best][1])
        for j in range(len(iterates) - 2, -1, -1):
            f_j = objective(iterates[j][1])
            if f_j >= f_best:
                break
            best, f_best = j, f_j
        p = iterates[best][1]

        # 6. reduction ratio of the damped model CG minimised; Levenberg-Marquardt (4.1)
        slope = float(g.dot(p))
        chosen = iterates[best][0]
        if chosen >= 1:  # CG's objective phi(x_i) = q(x_i) - q(0)
            predicted = float(res.objective[chosen - 1])
        elif bool(p.any()):  # the warm start itself: one more product
            predicted = slope + 0.5 * float(p.dot(gn(p)))
        else:
            predicted = 0.0
        if predicted < 0:
            rho = (f_best - f0) / predicted if math.isfinite(f_best) else -math.inf
        else:
            rho = math.nan
        next_lam = lam
        if rho < _RHO_LOW or (math.isnan(rho) and not math.isfinite(f_best)):
            next_lam = lam * group["damping_factor"]
        elif rho > _RHO_HIGH:
            next_lam = lam / group["damping_factor"]

        # 7. line search along p (Armijo backtracking)
        alpha, f_new = 1.0, f_best
        if group["line_search"]:
            tries = 0
            while not f_new <= f0 + _LS_C * alpha * min(slope, 0.0):
                if tries == _LS_TRIES:
                    alpha, f_new = 0.0, f0
                    break
                alpha *= _LS_SHRINK
                f_new = objective(alpha * p)
                tries += 1
        elif not math.isfinite(f_best):
            alpha, f_new = 0.0, f0

        # 8. update and state
        self._set_flat(theta + alpha * p)
        state["step"] = step_no
        state["damping"] = float(next_lam)
        i = 0
        for q in params:
            n = q.numel()
            self.state[q]["cg_direction"] = res.x[i : i + n].view_as(q).clone()
            i += n

        new_loss = f_new - (0.5 * wd * float((theta + alpha * p).pow(2).sum()) if wd else 0.0)
        diag_info = HFDiagnostics(
            step=step_no,
            loss=f_loss,
            new_loss=f_loss if alpha == 0.0 else new_loss,
            damping=lam,
            next_damping=float(next_lam),
            reduction_ratio=float(rho),
            predicted_reduction=float(predicted),
            cg_iterations=res.iterations,
            cg_stop=res.stop,
            cg_iterate=iterates[best][0],
            step_size=alpha,
            grad_norm=float(g.norm()),
            update_norm=abs(alpha) * float(p.norm()),
            closure_evaluations=evaluations,
            curvature_rows=gn.rows,
            seconds=time.perf_counter() - start,
        )
        self.last_diagnostics = diag_info
        logger.info(
            "HessianFree step %d: loss %.6g -> %.6g, rho %.3g, damping %.3g -> %.3g, "
            "CG %d iterations (%s, used %d), step size %.3g, %d closure calls, %.2f s",
            step_no, f_loss, diag_info.new_loss, rho, lam, next_lam, res.iterations,
            res.stop, diag_info.cg_iterate, alpha, evaluations, diag_info.seconds,
        )  # fmt: skip
        return orig_loss


def _check_options(group: dict[str, Any]) -> None:
    """Validate the hyperparameters of a parameter group."""
    owner = "HessianFree"
    check_choice(owner, "loss", group["loss"], MATCHING_LOSSES)
    for name in ("damping", "damping_factor"):
        v = group[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{owner}: {name} must be a finite float, got {v!r}")
    if not group["damping"] > 0:
        raise ValueError(f"{owner}: damping must be > 0, got {group['damping']}")
    if not group["damping_factor"] > 1:
        raise ValueError(f"{owner}: damping_factor must be > 1, got {group['damping_factor']}")
    for name in ("structural_damping", "weight_decay", "cg_decay", "cg_tol",
                 "preconditioner_exponent"):  # fmt: skip
        v = group[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{owner}: {name} must be a finite float, got {v!r}")
        if v < 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {v}")
    if not group["cg_tol"] > 0:
        raise ValueError(f"{owner}: cg_tol must be > 0, got {group['cg_tol']}")
    if group["cg_decay"] > 1:
        raise ValueError(f"{owner}: cg_decay must be in [0, 1], got {group['cg_decay']}")
    check_positive_int(owner, "max_cg_iter", group["max_cg_iter"])
    check_positive_int(owner, "preconditioner_samples", group["preconditioner_samples"])
    check_positive_int(owner, "seed", group["seed"], minimum=0)
    if group["preconditioner"] is not None:
        check_choice(owner, "preconditioner", group["preconditioner"], PRECONDITIONERS)
    if not isinstance(group["line_search"], bool):
        raise TypeError(f"{owner}: line_search must be a bool, got {group['line_search']!r}")
