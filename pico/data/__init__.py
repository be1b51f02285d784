"""The data layer: corpora, tokenizers, and token arrays prepared once into a cache.

    from pico.data import prepare_data
    data = prepare_data(corpus="shakespeare", tokenizer="bpe:4096")
    data.train, data.val          # memory-mapped token ids (uint16, or uint32 for big vocabs)
    data.tokenizer.decode(data.val[:100].tolist())

See docs/data.md for the corpora, tokenizers, split rule and cache layout.
"""

from pico.data.cache import PreparedData, load_prepared, prepare_data, token_dtype
from pico.data.corpora import CORPORA, Corpus, load_corpus
from pico.data.tokenizers import (
    DEFAULT_TOKENIZER,
    EOT,
    Tokenizer,
    build_tokenizer,
    canonical_spec,
    load_tokenizer,
)

__all__ = [
    "CORPORA",
    "DEFAULT_TOKENIZER",
    "EOT",
    "Corpus",
    "PreparedData",
    "Tokenizer",
    "build_tokenizer",
    "canonical_spec",
    "load_corpus",
    "load_prepared",
    "load_tokenizer",
    "prepare_data",
    "token_dtype",
]
