"""The train, generate and probe command lines, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pico.data import EOT

TINY = [
    "--corpus", "3seqs", "--tokenizer", "char", "--d-model", "16", "--n-layer", "1",
    "--n-head", "2", "--hidden-size", "16", "--block-size", "16", "--batch-size", "4",
    "--max-steps", "6", "--eval-interval", "3", "--eval-tokens", "64", "--num-threads", "1",
]  # fmt: skip


def run(repo_root, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo_root / "launch" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo_root,
    )


def assert_bad_input(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def trained(repo_root, tmp_path_factory):
    """One tiny K-gram run through the real command line; its run folder."""
    out = tmp_path_factory.mktemp("run") / "kgram"
    result = run(repo_root, "train.py", "--arch", "kgram_mlp", "--out", out, "-q", *TINY)
    assert result.returncode == 0, result.stderr
    return out


def test_train_writes_metrics_checkpoint_and_summary(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["val_loss"] == records[-1]["val_loss"]
    assert (trained / "checkpoint" / "model.pt").is_file()
    assert (trained / "checkpoint" / "tokenizer").is_dir()


def test_resume_continues_a_finished_run_to_more_steps(repo_root, trained, tmp_path):
    out = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    result = run(repo_root, "train.py", "--out", out, "--resume", "--max-steps", "9", "-q")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9]


def test_generate_every_strategy(repo_root, trained):
    for strategy in ("greedy", "sample", "top_k", "top_p"):
        result = run(
            repo_root, "generate.py", "--checkpoint", trained / "checkpoint",
            "--prompt", "0 1 2", "--strategy", strategy, "--max-new-tokens", "12",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("0 1 2")
        assert len(result.stdout.strip()) > len("0 1 2")


def test_generate_is_seeded(repo_root, trained):
    args = ["--checkpoint", trained / "checkpoint", "--strategy", "sample", "--seed", "3"]
    first = run(repo_root, "generate.py", *args, "--num-samples", "2")
    second = run(repo_root, "generate.py", *args, "--num-samples", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert "--- sample 2" in first.stdout


def test_probe_tokens_clusters_and_compare(repo_root, trained):
    ckpt = trained / "checkpoint"
    result = run(
        repo_root, "probe.py", "--checkpoint", ckpt, "--tokens", "1,22", "--clusters", "3",
        "--compare", ckpt, "-k", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "'1'  ->" in result.stdout
    assert "'22' spans 2 tokens in running text: '2' '2'" in result.stdout
    assert "cluster   2:" in result.stdout
    assert "linear_cka: 1.0000" in result.stdout
    assert "neighbour_overlap: 1.0000" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "gru"], "unknown arch 'gru'"),
        (["--corpus", "nosuchcorpus"], "nosuchcorpus"),
        (["--tokenizer", "wordpiece"], "wordpiece"),
        (["--d-model", "30", "--n-head", "4"], "d_model=30 is not divisible by n_head=4"),
        (["--lr", "-1"], "lr must be positive"),
        (["--config", "missing.json"], "config file not found"),
        (["--corpus", "tinystories"], "could not load roneneldan/TinyStories"),
        (["--from-results", "x.parquet"], "--from-results and --trial go together"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    ],
)
def test_train_bad_input_is_one_line_and_exit_2(repo_root, tmp_path, args, message):
    result = run(repo_root, "train.py", *TINY, "--out", tmp_path / "run", *args)
    assert_bad_input(result, message)


def test_tinystories_without_the_datasets_package(repo_root, tmp_path):
    """The set-up installs HF datasets; a machine without it is told how to get it."""
    hidden = tmp_path / "no-datasets"
    hidden.mkdir()
    (hidden / "datasets.py").write_text("raise ImportError(\"No module named 'datasets'\")\n")
    result = subprocess.run(
        [
            sys.executable,
            "launch/train.py",
            *TINY,
            "--out",
            tmp_path / "run",
            "--corpus",
            "tinystories",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo_root,
        env={**os.environ, "PYTHONPATH": str(hidden)},
    )
    assert_bad_input(result, "needs the HF datasets package: pip install 'pico[hf]'")
    assert not (tmp_path / "run").exists()


def test_missing_and_empty_corpus_files(repo_root, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path in (tmp_path / "missing.txt", empty):
        result = run(repo_root, "train.py", *TINY, "--out", tmp_path / "r", "--corpus", path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_a_run_folder_is_never_overwritten(repo_root, trained):
    before = (trained / "metrics.jsonl").read_text()
    result = run(repo_root, "train.py", *TINY, "--out", trained)
    assert_bad_input(result, "already holds a run")
    assert (trained / "metrics.jsonl").read_text() == before


def test_resume_refuses_a_checkpoint_of_another_architecture(repo_root, trained):
    result = run(repo_root, "train.py", "--out", trained, "--resume", "--arch", "lstm")
    assert_bad_input(result, "cannot change its architecture to 'lstm'")


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("generate.py", ["--checkpoint", "nowhere"], "checkpoint folder not found: nowhere"),
        ("generate.py", ["--checkpoint", "."], "is not a Pico checkpoint"),
        ("probe.py", ["--checkpoint", "nowhere", "--tokens", "a"], "checkpoint folder not found"),
    ],
)
def test_generate_and_probe_bad_input(repo_root, script, args, message):
    assert_bad_input(run(repo_root, script, *args), message)


def test_generate_annotates_each_new_token_with_its_neighbours(repo_root, trained):
    result = run(
        repo_root, "generate.py", "--checkpoint", trained / "checkpoint", "--prompt", "0 1",
        "--max-new-tokens", "5", "--neighbours", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text, annotations = result.stdout.split("\n\neach generated token and its 2 nearest tokens:\n")
    new = text.removeprefix("0 1")
    tokens = [*new.removesuffix(EOT)] + [EOT] * new.endswith(EOT)  # one character per token
    lines = annotations.splitlines()
    assert 1 <= len(lines) <= 5 and all(line.count("->") == 1 for line in lines)
    assert [line.split("->")[0].strip() for line in lines] == list(map(repr, tokens))


def test_probe_units_writes_json_and_a_chart(repo_root, trained, tmp_path):
    out = tmp_path / "probe" / "units.json"
    args = ["--checkpoint", trained / "checkpoint", "--units", out, "--units-tokens", "512"]
    result = run(repo_root, "probe.py", *args)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["unit_kind"] == "hidden-layer activations" and report["text"]["tokens"] == 512
    assert [(u["layer"], u["unit"]) for u in report["units"]] == [(0, u) for u in range(16)]
    assert all(0 <= u["selectivity"] <= 1 for u in report["units"])
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "most selective" in result.stdout


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("generate.py", ["--neighbours", "-1"], "--neighbours must be >= 0"),
        ("probe.py", ["--units", "units.txt"], "--units names a .json file"),
        ("probe.py", ["--units", "u.json", "--units-tokens", "1"], "--units-tokens must be"),
    ],
)
def test_annotation_and_unit_probe_bad_input(repo_root, trained, script, args, message):
    assert_bad_input(run(repo_root, script, "--checkpoint", trained / "checkpoint", *args), message)


def test_probe_needs_something_to_do(repo_root, trained):
    result = run(repo_root, "probe.py", "--checkpoint", trained / "checkpoint")
    assert_bad_input(result, "nothing to probe")
