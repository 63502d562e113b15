"""Connectionist temporal classification: the loss with input checks, the float64 reference of
Graves et al. 2006, greedy and prefix beam search decoders with character-LM fusion, and the
error rates of recognisers."""

from carousel.ctc.alphabet import Alphabet
from carousel.ctc.decode import CTCHypothesis, beam_search_decode, greedy_decode, prefix_beam_search
from carousel.ctc.loss import (
    CTCLoss,
    CTCReference,
    check_ctc_inputs,
    ctc_loss,
    ctc_loss_reference,
    min_ctc_length,
)
from carousel.ctc.metrics import character_error_rate, edit_distance, word_error_rate
from carousel.ctc.scorers import CharScorer, NGramCharScorer, RecurrentLMScorer

__all__ = [
    "Alphabet",
    "CTCHypothesis",
    "CTCLoss",
    "CTCReference",
    "CharScorer",
    "NGramCharScorer",
    "RecurrentLMScorer",
    "beam_search_decode",
    "character_error_rate",
    "check_ctc_inputs",
    "ctc_loss",
    "ctc_loss_reference",
    "edit_distance",
    "greedy_decode",
    "min_ctc_length",
    "prefix_beam_search",
    "word_error_rate",
]
