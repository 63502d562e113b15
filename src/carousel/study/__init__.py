"""Studies that turn the lectures' claims into numbers, tables and plots.

- :mod:`carousel.study.runner`: ``carousel study long-lag``, a resumable parallel grid of runs
  (model x task x T x seed) on the long-time-lag problems, until each paper's stopping rule;
- :mod:`carousel.study.models`: the models of the grid with their initialisation and optimiser;
- :mod:`carousel.study.train`: one run until the stopping rule or the budget;
- :mod:`carousel.study.capacity`: lecture 7a, an HMM with N states remembers log2(N) bits;
- :mod:`carousel.study.binary_addition` and :mod:`carousel.study.fsa`: lecture 7c, the adder
  and the finite-state automaton read out of its hidden states.
"""
