r"""Matching losses and Gauss-Newton curvature-vector products through ``torch.func``.

The generalised Gauss-Newton matrix (Schraudolph 2002; Martens 2010, section 4.2) of a loss
:math:`L(z(\theta))` computed from the network outputs :math:`z` is

.. math::

    G = J^\top H_L J, \qquad J = \frac{\partial z}{\partial \theta}, \qquad
    H_L = \frac{\partial^2 L}{\partial z^2},

positive semi-definite whenever :math:`L` is convex in :math:`z`. For a *matching* pair of
output non-linearity and loss (softmax with cross-entropy, identity with squared error,
logistic with binary cross-entropy) :math:`H_L` has a closed form, so :math:`Gv` costs one
forward-mode product :math:`Jv` (``torch.func.jvp``), one multiplication by :math:`H_L`, and
one reverse-mode product :math:`J^\top u` (``torch.func.vjp``) (Martens 2010, section 4.2;
Martens & Sutskever 2011, section 3.1). Structural damping (Martens & Sutskever 2011, section
3.2) adds :math:`\mu\lambda J_S^\top D_S J_S` with :math:`J_S` the Jacobian of the hidden
states, computed in the same two passes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap
from torch.nn.utils.rnn import PackedSequence

from carousel._checks import check_choice

__all__ = [
    "MATCHING_LOSSES",
    "GaussNewton",
    "loss_hessian_vector_product",
    "matching_loss",
    "model_function",
    "sample_loss_hessian_factor",
]

#: The matching loss/output pairs whose Hessian with respect to the outputs has a closed form.
#: Each equals the torch function of the same name with ``reduction="mean"`` applied to the
#: model's raw outputs (logits for the two cross-entropies).
MATCHING_LOSSES = ("cross_entropy", "mse", "binary_cross_entropy")


_JVP_READY = False


def _prepare_forward_ad() -> None:
    """Import torch's forward-mode decompositions once, up front: on first use ``jvp`` imports
    them itself and they script functions with ``torch.jit.script``, which warns
    (DeprecationWarning) in this torch version. The import takes a few seconds, once per
    process."""
    global _JVP_READY
    if _JVP_READY:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - layout of another torch version
            pass
    _JVP_READY = True


def _check_outputs(owner: str, loss: str, outputs: Tensor) -> None:
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"{owner}: the model must return the output tensor the loss is computed from "
            f"(before the output non-linearity), got {type(outputs).__name__}"
        )
    if not outputs.is_floating_point():
        raise TypeError(f"{owner}: model outputs must be floating point, got {outputs.dtype}")
    if outputs.dim() < 2:
        raise ValueError(
            f"{owner}: expected model outputs of shape (..., O) with at least 2 dims (rows, "
            f"outputs), got {tuple(outputs.shape)}; add a trailing dim with unsqueeze(-1)"
        )
    if loss == "cross_entropy" and outputs.shape[-1] < 2:
        raise ValueError(
            f"{owner}: loss='cross_entropy' needs at least 2 classes in the last dim of the "
            f"model outputs, got shape {tuple(outputs.shape)}"
        )


def _normaliser(loss: str, outputs: Tensor) -> int:
    """The count the mean runs over: rows for cross-entropy, elements otherwise."""
    return outputs.numel() // outputs.shape[-1] if loss == "cross_entropy" else outputs.numel()


def matching_loss(loss: str, outputs: Tensor, targets: Tensor) -> Tensor:
    r"""The loss whose curvature :class:`~carousel.optim.HessianFree` assumes for ``loss``.

    - ``"cross_entropy"``: softmax over the last dim and cross-entropy, averaged over all other
      positions; ``F.cross_entropy(outputs.reshape(-1, C), targets.reshape(-1))``. ``targets``
      holds class indices (``outputs.shape[:-1]``) or probabilities (``outputs.shape``).
    - ``"mse"``: identity output and squared error averaged over all elements,
      ``F.mse_loss(outputs, targets)``.
    - ``"binary_cross_entropy"``: logistic output and binary cross-entropy averaged over all
      elements, ``F.binary_cross_entropy_with_logits(outputs, targets)``.

    Args:
        loss: one of :data:`MATCHING_LOSSES`.
        outputs: ``(..., O)`` raw model outputs.
        targets: as above.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: for an unknown ``loss`` or outputs of fewer than 2 dims.
    """
    check_choice("matching_loss", "loss", loss, MATCHING_LOSSES)
    _check_outputs("matching_loss", loss, outputs)
    if loss == "cross_entropy":
        C = outputs.shape[-1]
        if targets.shape == outputs.shape and targets.is_floating_point():
            return F.cross_entropy(outputs.reshape(-1, C), targets.reshape(-1, C))
        return F.cross_entropy(outputs.reshape(-1, C), targets.reshape(-1))
    if loss == "mse":
        return F.mse_loss(outputs, targets)
    return F.binary_cross_entropy_with_logits(outputs, targets)


def loss_hessian_vector_product(loss: str, outputs: Tensor, u: Tensor) -> Tensor:
    r"""The product :math:`H_L u` of the loss's Hessian with respect to the outputs.

    With :math:`N` the count the mean runs over (:func:`matching_loss`), per row of
    ``outputs``:

    - cross-entropy: :math:`H u = (\operatorname{diag}(p) - p p^\top) u / N`,
      :math:`p = \operatorname{softmax}(z)`;
    - mse: :math:`H u = 2u / N`;
    - binary cross-entropy: :math:`H u = \sigma(z)(1 - \sigma(z)) \odot u / N`.

    The targets do not enter: for a matching pair the Hessian depends on the outputs only
    (Martens & Sutskever 2011, section 3.1).

    Args:
        loss: one of :data:`MATCHING_LOSSES`.
        outputs: ``(..., O)`` raw outputs at which the Hessian is taken.
        u: ``(..., O)`` vector in output space.

    Returns:
        ``(..., O)``.
    """
    n = _normaliser(loss, outputs)
    if loss == "cross_entropy":
        p = outputs.softmax(-1)
        return (p * u - p * (p * u).sum(-1, keepdim=True)) / n
    if loss == "mse":
        return u * (2.0 / n)
    s = outputs.sigmoid()
    return s * (1 - s) * u / n


def sample_loss_hessian_factor(
    loss: str, outputs: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    r"""A random vector :math:`e` with :math:`\mathbb{E}[e e^\top] = N H_L` row by row and rows
    independent, used to estimate :math:`\operatorname{diag}(J^\top H_L J)` from one reverse-mode
    product (Chapelle & Erhan 2011).

    - cross-entropy: :math:`e = \text{onehot}(y) - p` with :math:`y \sim \text{Cat}(p)`;
    - mse: :math:`e = \sqrt{2}\,r` with Rademacher :math:`r`;
    - binary cross-entropy: :math:`e = y - \sigma(z)` with
      :math:`y \sim \text{Bernoulli}(\sigma(z))`.

    Args:
        loss: one of :data:`MATCHING_LOSSES`.
        outputs: ``(..., O)`` raw outputs.
        generator: random stream on ``outputs.device``.

    Returns:
        ``(..., O)``.
    """
    with torch.no_grad():
        if loss == "cross_entropy":
            p = outputs.softmax(-1)
            flat = p.reshape(-1, p.shape[-1])
            y = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
            return (F.one_hot(y, p.shape[-1]).to(p.dtype) - flat).view_as(p)
        if loss == "mse":
            return _rademacher(outputs, generator) * math.sqrt(2.0)
        s = outputs.sigmoid()
        u = torch.rand(s.shape, generator=generator, device=s.device, dtype=s.dtype)
        return (u < s).to(s.dtype) - s


def _rademacher(like: Tensor, generator: torch.Generator | None) -> Tensor:
    r = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return r.to(like.dtype) * 2 - 1


def _first_tensor(owner: str, module: nn.Module, output: Any) -> Tensor:
    """The hidden-state tensor in a module's output: the output itself, ``.data`` of a
    ``PackedSequence``, or the first element of a tuple (``(output, state)`` of RNN layers)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, PackedSequence):
        output = output.data
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{owner}: structural damping needs {type(module).__name__} to return a tensor of "
            f"hidden states (or a tuple starting with one), got {type(output).__name__}"
        )
    return output


def model_function(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
    structural_modules: Sequence[nn.Module] = (),
    owner: str = "GaussNewton",
    output_fn: Callable[[Any], Tensor] | None = None,
) -> Callable[[dict[str, Tensor]], tuple[Tensor, tuple[Tensor, ...]]]:
    """``params -> (outputs, hidden)``: ``model(*args, **kwargs)`` as a pure function of the
    named parameters it is given (``torch.func.functional_call``; other parameters and buffers
    keep their values), with the outputs of ``structural_modules`` captured by forward hooks
    during the call (every call of a module adds one tensor).

    Args:
        model: the network; its output must be the tensor the loss sees.
        args, kwargs: the inputs of the call.
        structural_modules: submodules whose outputs are the hidden states of structural
            damping.
        owner: name used in error messages.
        output_fn: maps the model's return value to the output tensor (``None``: the return
            value is the tensor), e.g. ``lambda r: r.output`` for a carousel layer.

    Returns:
        The function.
    """
    kwargs = dict(kwargs or {})

    def fn(params: dict[str, Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        hidden: list[Tensor] = []
        handles = [
            m.register_forward_hook(
                lambda mod, _inp, out: hidden.append(_first_tensor(owner, mod, out))
            )
            for m in structural_modules
        ]
        try:
            out = functional_call(model, params, tuple(args), kwargs)
            if output_fn is not None:
                out = output_fn(out)
        finally:
            for h in handles:
                h.remove()
        if structural_modules and not hidden:
            raise ValueError(
                f"{owner}: none of the structural_modules ran during model(...); pass the "
                "recurrent submodules that model.forward calls"
            )
        return out, tuple(hidden)

    return fn


class GaussNewton:
    r"""The damped Gauss-Newton operator of one mini-batch at fixed parameters.

    .. math::

        (G + \lambda I) v, \qquad
        G = J^\top H_L J + \frac{w_S}{N} J_S^\top J_S + w_d I,

    where :math:`J` is the Jacobian of the model outputs on the curvature batch, :math:`H_L` the
    Hessian of the matching loss (:func:`loss_hessian_vector_product`, including its
    :math:`1/N`), :math:`J_S` the Jacobian of the captured hidden states, :math:`N` the number
    of output rows (all dims but the last), :math:`w_S = \mu\lambda` the structural damping
    weight (Martens & Sutskever 2011, section 3.2, with :math:`D_S = I`: the penalty is
    :math:`\frac{1}{2N}\lVert \Delta h\rVert^2` summed over every hidden unit and step) and
    :math:`w_d` the weight decay. Each product costs one ``jvp`` (which recomputes the forward
    pass) and one reverse pass through the graph kept from construction.

    Vectors are flat, in the order of ``params``; :meth:`unflatten` and :meth:`flatten` convert.

    Args:
        fn: ``params -> (outputs, hidden)`` (:func:`model_function`).
        params: name -> tensor, the point at which the curvature is taken.
        loss: one of :data:`MATCHING_LOSSES`.
        damping: :math:`\lambda`.
        structural_weight: :math:`w_S = \mu\lambda`.
        weight_decay: :math:`w_d`.
        owner: name used in error messages.

    Raises:
        TypeError, ValueError: if the outputs do not fit ``loss``.
    """

    def __init__(
        self,
        fn: Callable[[dict[str, Tensor]], tuple[Tensor, tuple[Tensor, ...]]],
        params: dict[str, Tensor],
        *,
        loss: str,
        damping: float = 0.0,
        structural_weight: float = 0.0,
        weight_decay: float = 0.0,
        owner: str = "GaussNewton",
    ) -> None:
        check_choice(owner, "loss", loss, MATCHING_LOSSES)
        _prepare_forward_ad()
        self.fn = fn
        self.loss = loss
        self.damping = float(damping)
        self.structural_weight = float(structural_weight)
        self.weight_decay = float(weight_decay)
        self.params = {k: v.detach() for k, v in params.items()}
        self._names = list(self.params)
        self._shapes = [p.shape for p in self.params.values()]
        self._numels = [p.numel() for p in self.params.values()]
        with torch.enable_grad():
            # [:2]: torch types the results with and without has_aux as one union
            (outputs, hidden), self._vjp_fn = vjp(fn, self.params)[:2]
        _check_outputs(owner, loss, outputs)
        self.outputs = outputs.detach()  # (..., O)
        self.hidden = tuple(h.detach() for h in hidden)
        self.rows = outputs.numel() // outputs.shape[-1]  # N

    # ------------------------------------------------------------------ vectors
    @property
    def numel(self) -> int:
        """Length of the flat parameter vector."""
        return sum(self._numels)

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """Flat vector -> name -> tensor (views of ``v``)."""
        out, i = {}, 0
        for name, shape, n in zip(self._names, self._shapes, self._numels):
            out[name] = v[i : i + n].view(shape)
            i += n
        return out

    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """name -> tensor (or tensors in order) -> flat vector."""
        seq = [tensors[k] for k in self._names] if isinstance(tensors, dict) else list(tensors)
        return torch.cat([t.reshape(-1) for t in seq])

    # ------------------------------------------------------------------ products
    def jacobian_vector_product(self, v: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(J v, J_S v)``: the change of the outputs and hidden states along ``v``."""
        with torch.enable_grad():
            _, (dz, dh) = jvp(self.fn, (self.params,), (self.unflatten(v),))[:2]  # as in __init__
        return dz, dh

    def _transpose(self, cz: Tensor, ch: tuple[Tensor, ...]) -> Tensor:
        with torch.enable_grad():
            (g,) = self._vjp_fn((cz, ch))
        return self.flatten(g).detach()

    def gauss_newton_product(self, v: Tensor) -> Tensor:
        r""":math:`G v` with the structural term and weight decay, without the Tikhonov term
        :math:`\lambda v`."""
        dz, dh = self.jacobian_vector_product(v)
        cz = loss_hessian_vector_product(self.loss, self.outputs, dz)
        ch = tuple(d * (self.structural_weight / self.rows) for d in dh)
        out = self._transpose(cz, ch)
        if self.weight_decay:
            out = out + self.weight_decay * v
        return out

    def __call__(self, v: Tensor) -> Tensor:
        r""":math:`(G + \lambda I) v`, the matrix of the conjugate-gradient solve."""
        out = self.gauss_newton_product(v)
        if self.damping:
            out = out + self.damping * v
        return out

    def quadratic_form(self, v: Tensor) -> float:
        r""":math:`v^\top (J^\top H_L J + w_d I) v`, the undamped curvature along ``v``, from one
        forward-mode product (no reverse pass)."""
        dz, _ = self.jacobian_vector_product(v)
        hz = loss_hessian_vector_product(self.loss, self.outputs, dz)
        value = float((dz * hz).sum())
        if self.weight_decay:
            value += self.weight_decay * float(v.dot(v))
        return value

    def diagonal_estimate(
        self, generator: torch.Generator | None = None, samples: int = 1
    ) -> Tensor:
        r"""An unbiased estimate of :math:`\operatorname{diag}(G)` (without :math:`\lambda`),
        from ``samples`` reverse-mode products with random output-space vectors (Chapelle &
        Erhan 2011): :math:`\operatorname{diag}(J^\top H_L J) = \frac{1}{N'}\mathbb{E}[(J^\top
        e)^2]` for :math:`e` from :func:`sample_loss_hessian_factor`, and likewise for the
        structural term with Rademacher vectors.

        Returns:
            A flat vector, non-negative.
        """
        n = _normaliser(self.loss, self.outputs)
        scale_h = math.sqrt(self.structural_weight / self.rows) if self.structural_weight else 0.0
        many = self.outputs.expand(samples, *self.outputs.shape)  # (K, ..., O)
        e = sample_loss_hessian_factor(self.loss, many, generator) / math.sqrt(n)
        ch = tuple(
            _rademacher(h.expand(samples, *h.shape), generator) * scale_h for h in self.hidden
        )
        with torch.enable_grad():
            if samples == 1:
                (g,) = self._vjp_fn((e[0], tuple(c[0] for c in ch)))
                g = {k: t.unsqueeze(0) for k, t in g.items()}
            else:  # all samples in one batched reverse pass
                (g,) = vmap(self._vjp_fn)((e, ch))
        flat = torch.cat([g[k].reshape(samples, -1) for k in self._names], 1).detach()
        acc = (flat * flat).sum(0)
        diag = acc / samples
        if self.weight_decay:
            diag = diag + self.weight_decay
        return diag
