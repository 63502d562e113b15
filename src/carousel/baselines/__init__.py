"""Baselines of lecture 7a for the long-time-lag problems: a memoryless feed-forward net on
delay taps, and the hidden-state models (HMM, linear dynamical system) from hmmlearn and
pykalman (optional extra ``[baselines]``; imported only when fitted)."""

from carousel.baselines.delay_taps import DelayTapNet, delay_taps
from carousel.baselines.hidden_state import HMMBaseline, LDSBaseline

__all__ = ["DelayTapNet", "HMMBaseline", "LDSBaseline", "delay_taps"]
