"""The hidden-state models of lecture 7a, fitted by the well-kept libraries that implement them:
a hidden Markov model (``hmmlearn``) and a linear dynamical system (``pykalman``).

Both are fitted by expectation-maximisation in their library; carousel only arranges the
sequences for the library and then reads the fitted parameters into an exact filtering pass of
its own, vectorised over the batch, to get each step's predictive distribution (the
library's own likelihoods are the oracle of the tests). Install them with the optional extra
``pip install "carousel-rnn[baselines]"``.

The lecture's point about HMMs: the future depends on the past only through the current hidden
state, so an HMM with N states carries at most log2(N) bits across time. Precisely, if the
model predicts a block ``y`` after a prefix ``x`` by ``q(y | x) = sum_s p(s | x) p(y | s)``,
then ``q(y | x) <= sum_s p(y | s) =: g(y)`` with ``sum_y g(y) = N``, and for ``k`` uniformly
random bits ``x`` to be recalled (``y = x``), Jensen's inequality gives

    E[-log2 q(x | x)] >= -log2 E[g(x)] = k - log2 N,

so the bits it recalls, ``k - E[-log2 q(x | x)]``, are at most ``log2 N``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = ["HMMBaseline", "LDSBaseline"]


def _import(module: str) -> ModuleType:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"carousel.baselines needs {module.split('.')[0]}: "
            'pip install "carousel-rnn[baselines]"'
        ) from exc


def _check_tokens(owner: str, tokens: Tensor, num_symbols: int) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{owner}: expected tokens as an int tensor of shape (T, B), got {got}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= num_symbols):
        raise ValueError(
            f"{owner}: tokens must lie in [0, {num_symbols - 1}], got values in "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )
    return tokens


def _repair_unused_states(model: Any) -> None:
    """EM can leave a state that no sequence visits with an all-zero transition (or emission)
    row, which hmmlearn then refuses to score; such a state carries no probability mass, so a
    uniform row there changes no likelihood."""
    for name in ("transmat_", "emissionprob_"):
        rows = np.array(getattr(model, name), dtype=float)
        empty = rows.sum(1) <= 0
        if empty.any():
            rows[empty] = 1.0 / rows.shape[1]
            setattr(model, name, rows)


class HMMBaseline:
    """A discrete hidden Markov model fitted by EM (``hmmlearn.hmm.CategoricalHMM``).

    EM finds a local optimum; :meth:`fit` runs ``restarts`` random initialisations and keeps
    the one with the highest training likelihood.

    Args:
        num_states: number of hidden states ``N``.
        num_symbols: size of the observation alphabet.
        n_iter: EM iterations per restart.
        tol: EM convergence tolerance on the log-likelihood.
        restarts: number of random initialisations.
        seed: seed of the first initialisation (restart ``r`` uses ``seed + r``).

    Example:
        >>> hmm = HMMBaseline(2, 2, restarts=1, seed=0)
        >>> tokens = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])  # (T=4, B=2)
        >>> hmm.fit(tokens).log_likelihood(tokens).shape
        torch.Size([2])
    """

    def __init__(
        self,
        num_states: int,
        num_symbols: int,
        *,
        n_iter: int = 200,
        tol: float = 1e-4,
        restarts: int = 3,
        seed: int = 0,
    ) -> None:
        owner = "HMMBaseline"
        self.num_states = check_positive_int(owner, "num_states", num_states)
        self.num_symbols = check_positive_int(owner, "num_symbols", num_symbols)
        self.n_iter = check_positive_int(owner, "n_iter", n_iter)
        self.restarts = check_positive_int(owner, "restarts", restarts)
        self.tol = float(tol)
        self.seed = int(seed)
        self.model = None

    def fit(self, tokens: Tensor) -> HMMBaseline:
        """Fit by EM on equal-length token sequences.

        Args:
            tokens: ``(T, B)`` int, symbols in ``[0, num_symbols)``.

        Returns:
            ``self``.
        """
        hmm = _import("hmmlearn.hmm")
        tokens = _check_tokens("HMMBaseline", tokens, self.num_symbols)
        T, B = tokens.shape
        X = tokens.t().reshape(-1, 1).cpu().numpy()
        lengths = [T] * B
        best, best_score = None, -math.inf
        for r in range(self.restarts):
            model = hmm.CategoricalHMM(
                n_components=self.num_states,
                n_features=self.num_symbols,
                n_iter=self.n_iter,
                tol=self.tol,
                random_state=self.seed + r,
                implementation="scaling",
            )
            model.fit(X, lengths)
            _repair_unused_states(model)
            score = model.score(X, lengths)
            if score > best_score:
                best, best_score = model, score
        self.model = best
        return self

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.model is None:
            raise RuntimeError("HMMBaseline: call fit() first")
        m = self.model
        to = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        return to(m.startprob_), to(m.transmat_), to(m.emissionprob_)

    def predictive(self, tokens: Tensor) -> Tensor:
        """The model's distribution of each token given the tokens before it (the forward
        algorithm, in float64).

        Args:
            tokens: ``(T, B)`` int.

        Returns:
            ``(T, B, num_symbols)``: row ``t`` is ``p(x_t = . | x_0 .. x_{t-1})``.
        """
        tokens = _check_tokens("HMMBaseline", tokens, self.num_symbols)
        start, trans, emit = self._params()  # (N,), (N, N), (N, S)
        T, B = tokens.shape
        belief = start.expand(B, -1)  # p(s_t | x_<t), (B, N)
        out = []
        for t in range(T):
            out.append(belief @ emit)  # (B, S)
            post = belief * emit[:, tokens[t]].t()  # (B, N), unnormalised p(s_t | x_<=t)
            post = post / post.sum(-1, keepdim=True)
            belief = post @ trans
        return torch.stack(out)  # (T, B, S)

    def log_likelihood(self, tokens: Tensor) -> Tensor:
        """``log p(x)`` of each sequence, in nats.

        Args:
            tokens: ``(T, B)`` int.

        Returns:
            ``(B,)`` float64.
        """
        p = self.predictive(tokens)
        return p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).log().sum(0)


class LDSBaseline:
    r"""A linear dynamical system with Gaussian noise fitted by EM (``pykalman.KalmanFilter``).

    .. math::

        z_{t+1} = A z_t + b + \epsilon_t, \quad y_t = C z_t + d + \delta_t, \quad
        \epsilon_t \sim N(0, Q), \; \delta_t \sim N(0, R)

    pykalman fits one sequence; :meth:`fit` concatenates the training sequences with ``gap``
    unobserved (masked) steps between them, across which the state diffuses.

    Args:
        state_size: dimension of ``z``.
        n_iter: EM iterations.
        gap: masked steps between concatenated sequences.
        seed: seeds pykalman's random initial observation matrix.
    """

    def __init__(self, state_size: int, *, n_iter: int = 10, gap: int = 2, seed: int = 0) -> None:
        owner = "LDSBaseline"
        self.state_size = check_positive_int(owner, "state_size", state_size)
        self.n_iter = check_positive_int(owner, "n_iter", n_iter)
        self.gap = check_positive_int(owner, "gap", gap, minimum=0)
        self.seed = int(seed)
        self.model = None

    def fit(self, observations: Tensor) -> LDSBaseline:
        """Fit by EM.

        Args:
            observations: ``(T, B, D)`` float, equal-length sequences.

        Returns:
            ``self``.
        """
        pykalman = _import("pykalman")
        if observations.dim() != 3:
            raise ValueError(
                f"LDSBaseline: expected observations of shape (T, B, D), "
                f"got {tuple(observations.shape)}"
            )
        T, B, D = observations.shape
        obs = observations.detach().double().cpu().numpy()
        gap = np.full((self.gap, B, D), np.nan)
        stream = np.concatenate([obs, gap]).transpose(1, 0, 2).reshape(-1, D)
        X = np.ma.masked_invalid(stream)
        kf = pykalman.KalmanFilter(
            n_dim_state=self.state_size,
            n_dim_obs=D,
            random_state=self.seed,
            em_vars=[
                "transition_matrices",
                "observation_matrices",
                "transition_covariance",
                "observation_covariance",
                "transition_offsets",
                "observation_offsets",
                "initial_state_mean",
                "initial_state_covariance",
            ],
        )
        self.model = kf.em(X, n_iter=self.n_iter)
        return self

    def params(self) -> dict[str, Tensor]:
        """The fitted parameters as float64 tensors: ``A, b, C, d, Q, R, z0, P0``."""
        if self.model is None:
            raise RuntimeError("LDSBaseline: call fit() first")
        m = self.model
        to = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        return {
            "A": to(m.transition_matrices),
            "b": to(m.transition_offsets),
            "C": to(m.observation_matrices),
            "d": to(m.observation_offsets),
            "Q": to(m.transition_covariance),
            "R": to(m.observation_covariance),
            "z0": to(m.initial_state_mean),
            "P0": to(m.initial_state_covariance),
        }

    def predictive(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Kalman filtering: the Gaussian predictive distribution of each observation given the
        ones before it (float64).

        Each sequence starts from the fitted initial state ``N(z0, P0)`` (pykalman's
        convention: ``z0`` is the state at the first step).

        Args:
            observations: ``(T, B, D)``.

        Returns:
            ``(mean, cov)``: ``(T, B, D)`` and ``(T, D, D)`` (the covariance does not depend on
            the observed values).
        """
        p = self.params()
        A, b, C, d, Q, R = p["A"], p["b"], p["C"], p["d"], p["Q"], p["R"]
        y = observations.detach().double().cpu()
        T, B, D = y.shape
        z = p["z0"].expand(B, -1)  # predicted state mean, (B, n)
        P = p["P0"]  # predicted state covariance, (n, n)
        means, covs = [], []
        for t in range(T):
            S = C @ P @ C.T + R  # (D, D)
            means.append(z @ C.T + d)  # (B, D)
            covs.append(S)
            K = P @ C.T @ torch.linalg.inv(S)  # (n, D)
            z = z + (y[t] - means[-1]) @ K.T  # filtered mean
            P = P - K @ C @ P
            z = z @ A.T + b  # predict the next step
            P = A @ P @ A.T + Q
        return torch.stack(means), torch.stack(covs)
