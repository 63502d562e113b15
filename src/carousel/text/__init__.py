"""Text for language models: corpora (files, folders, the built-in default corpus), the
train/validation split, character and word vocabularies, streams batched for truncated BPTT,
the Kneser-Ney n-gram baseline, and tools to see what a model's memory cells track.

Example:
    >>> from carousel.text import Vocabulary, StreamBatches
    >>> vocab = Vocabulary.build("hello world")
    >>> batches = StreamBatches(vocab.encode("hello world, hello"), batch_size=2, tbptt_len=4)
    >>> [tuple(b.inputs.shape) for b in batches]
    [(4, 2), (4, 2)]
"""

from carousel.text.batching import StreamBatch, StreamBatches, stream_rows
from carousel.text.corpus import (
    DEFAULT_CORPUS_MODULES,
    CorpusError,
    CorpusSplit,
    TextSource,
    corpus_fingerprint,
    default_corpus,
    load_texts,
    read_text_file,
    split_texts,
)
from carousel.text.english import english_word_counts
from carousel.text.ngram import KneserNeyLM, bits_to_perplexity
from carousel.text.vocab import UNITS, UNKNOWN_POLICIES, UNKNOWN_TOKEN, Vocabulary, tokenize

__all__ = [
    "DEFAULT_CORPUS_MODULES",
    "UNITS",
    "UNKNOWN_POLICIES",
    "UNKNOWN_TOKEN",
    "CorpusError",
    "CorpusSplit",
    "KneserNeyLM",
    "StreamBatch",
    "StreamBatches",
    "TextSource",
    "Vocabulary",
    "bits_to_perplexity",
    "corpus_fingerprint",
    "default_corpus",
    "english_word_counts",
    "load_texts",
    "read_text_file",
    "split_texts",
    "stream_rows",
    "tokenize",
]
