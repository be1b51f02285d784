"""Every command refuses hostile input the same way: exit status 2, one line on stderr, nothing on
stdout, and every file that was there before is still there, byte for byte, with nothing added.

The cases run against one folder (`world`) that holds a real tiny trained run, damaged copies of
it, a results file with its report, and assorted traps (a file where a folder is expected, config
files with wrong types). Each case snapshots that whole folder before and compares after. Search
cases point Ray's temporary folder into it too, so a search that started Ray before refusing
shows up as a new file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import torch

from analysis.synthetic import make_results

TINY = [
    "--corpus", "3seqs", "--tokenizer", "char", "--d-model", "16", "--n-layer", "1",
    "--n-head", "2", "--hidden-size", "16", "--block-size", "16", "--batch-size", "4",
    "--max-steps", "6", "--eval-interval", "3", "--eval-tokens", "64", "--num-threads", "1",
]  # fmt: skip
SCRIPTS = {
    "train": "launch/train.py",
    "generate": "launch/generate.py",
    "probe": "launch/probe.py",
    "search": "launch/search.py",
    "report": "analysis/report.py",
}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")


@dataclass(frozen=True)
class Case:
    """One hostile command line: `{W}` in an argument stands for the world folder."""

    kind: str  # which class of failure of the issue it belongs to
    command: str  # a key of SCRIPTS
    args: tuple[str | bytes, ...]
    message: str  # a piece of the one line expected on stderr


def case(kind: str, command: str, *args: str | bytes, message: str, marks=()) -> object:
    """A parametrization entry whose id reads `kind-command-N`."""
    return pytest.param(Case(kind, command, args, message), marks=marks)


RUN, CKPT, RESULTS = "{W}/run", "{W}/run/checkpoint", "{W}/search/results.parquet"
SEARCH = ["--space", "tiny", "--corpus", "3seqs", "--tokenizer", "char", "--no-dashboard", "-q"]


def search_case(kind: str, *args: str | bytes, message: str, marks=()) -> object:
    """A new search in {W}/experiments unless the case says otherwise."""
    storage = ("--storage", "{W}/experiments")
    return case(kind, "search", *SEARCH, *storage, *args, message=message, marks=marks)


# fmt: off
CASES = [
    # 1. Writing over existing data: an input, a checkpoint, another run's files.
    case("overwrite", "report", RESULTS, "--out", RESULTS, message="is the input file"),
    case("overwrite", "report", RESULTS, "--out", f"{CKPT}/r.html", message="inside checkpoint"),
    case("overwrite", "report", RESULTS, "--png-dir", CKPT, message="inside checkpoint"),
    case("overwrite", "report", RESULTS, "--png-dir", f"{CKPT}/tokenizer", message="checkpoint"),
    case("overwrite", "report", RESULTS, "--out", f"{RUN}/metrics.jsonl", message="run's own"),
    case("overwrite", "train", *TINY, "--out", CKPT, message="inside checkpoint"),
    case("overwrite", "train", *TINY, "--out", f"{CKPT}/tokenizer", message="inside checkpoint"),
    case("overwrite", "train", *TINY, "--out", f"{RUN}/again", message="inside the run"),
    case("overwrite", "train", *TINY, "--out", RUN, message="already holds a run"),
    case("overwrite", "train", *TINY, "--out", "{W}/halfrun", message="already holds a run"),
    case("overwrite", "probe", "--checkpoint", CKPT, "--units", f"{CKPT}/config.json",
         message="inside checkpoint"),
    case("overwrite", "probe", "--checkpoint", CKPT, "--units", f"{RUN}/summary.json",
         message="run's own"),
    search_case("overwrite", "--output", RESULTS, message="already exists"),
    search_case("overwrite", "--output", f"{CKPT}/r.parquet", message="inside checkpoint"),
    case("overwrite", "search", *SEARCH, "--storage", RUN, "--name", "checkpoint",
         message="inside checkpoint"),
    # 2. Damaged or foreign files.
    case("damaged", "generate", "--checkpoint", "{W}/bad/model_empty/checkpoint",
         message="model.pt is damaged"),
    case("damaged", "probe", "--checkpoint", "{W}/bad/model_empty/checkpoint", "--tokens", "1",
         message="model.pt is damaged"),
    case("damaged", "train", "--out", "{W}/bad/model_empty", "--resume",
         message="model.pt is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/model_cut/checkpoint",
         message="model.pt is damaged"),
    case("damaged", "train", "--out", "{W}/bad/trainer_empty", "--resume",
         message="trainer.pt is damaged"),
    case("damaged", "train", "--out", "{W}/bad/trainer_cut", "--resume",
         message="trainer.pt is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/model_pickle/checkpoint",
         message="model.pt is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/model_shapes/checkpoint",
         message="model.pt does not match"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/model_tensor/checkpoint",
         message="model.pt is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/search", message="not a Pico checkpoint"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/no_tokenizer/checkpoint",
         message="holds no tokenizer"),
    case("damaged", "probe", "--checkpoint", "{W}/bad/no_tokenizer/checkpoint", "--tokens", "1",
         message="holds no tokenizer"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/tokenizer_junk/checkpoint",
         message="pico_tokenizer.json is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/config_junk/checkpoint",
         message="config.json is damaged"),
    case("damaged", "probe", "--checkpoint", "{W}/bad/config_junk/checkpoint", "--tokens", "1",
         message="config.json is damaged"),
    case("damaged", "train", "--out", "{W}/bad/config_junk", "--resume",
         message="config.json is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/config_types/checkpoint",
         message="d_model must be"),
    case("damaged", "train", "--out", "{W}/bad/config_types", "--resume",
         message="d_model must be"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/config_list/checkpoint",
         message="config.json is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/meta_junk/checkpoint",
         message="meta.json is damaged"),
    case("damaged", "generate", "--checkpoint", "{W}/bad/meta_empty/checkpoint",
         message="meta.json is damaged"),
    case("damaged", "train", "--out", "{W}/bad/rng_junk", "--resume",
         message="rng.json is damaged"),
    case("damaged", "train", "--out", "{W}/bad/metrics_cut", "--resume",
         message="metrics.jsonl is damaged"),
    case("damaged", "probe", "--checkpoint", CKPT, "--compare", "{W}/bad/model_empty/checkpoint",
         message="model.pt is damaged"),
    case("damaged", "report", "{W}/empty.parquet", message="not a readable Parquet file"),
    case("damaged", "report", "{W}/cut.parquet", message="not a readable Parquet file"),
    case("damaged", "train", *TINY, "--out", "{W}/new", "--from-results", "{W}/cut.parquet",
         "--trial", "00000", message="not a Pico results file"),
    case("damaged", "search", "--storage", "{W}/damaged", "--name", "junk_manifest", "--resume",
         message="experiment.json is damaged"),
    case("damaged", "search", "--storage", "{W}/damaged", "--name", "list_manifest", "--resume",
         message="experiment.json is damaged"),
    case("damaged", "search", "--storage", "{W}/damaged", "--name", "junk_study", "--resume",
         message="study.journal is damaged"),
    # 3. Outputs that cannot be written.
    case("unwritable", "report", RESULTS, "--out", "{W}/afile/r.html", message="afile"),
    case("unwritable", "report", RESULTS, "--out", "{W}/search", message="is a folder"),
    case("unwritable", "report", RESULTS, "--png-dir", "{W}/afile", message="is a file"),
    case("unwritable", "report", RESULTS, "--png-dir", "{W}/afile/png", message="afile"),
    case("unwritable", "train", *TINY, "--out", "{W}/afile", message="is a file"),
    case("unwritable", "train", *TINY, "--out", "{W}/afile/run", message="afile"),
    case("unwritable", "train", *TINY, "--out", "{W}/new", "--cache-dir", "{W}/afile",
         message="afile"),
    case("unwritable", "probe", "--checkpoint", CKPT, "--units", "{W}/afile/u.json",
         message="afile"),
    case("unwritable", "probe", "--checkpoint", CKPT, "--units", "{W}/folder.json",
         message="is a folder"),
    case("unwritable", "search", *SEARCH, "--storage", "{W}/afile", message="afile"),
    case("unwritable", "search", *SEARCH, "--storage", "{W}/afile/sub", message="afile"),
    search_case("unwritable", "--output", "{W}/afile/r.parquet", message="afile"),
    search_case("unwritable", "--output", "{W}/search", message="already exists"),
    search_case("unwritable", "--cache-dir", "{W}/afile", message="afile"),
    # 4. Wrong types inside JSON inputs.
    *(
        case("types", "train", *TINY, "--out", "{W}/new", "--config", f"{{W}}/cfg/{name}.json",
             message=message)
        for name, message in [
            ("d_model_str", "d_model must be an integer, got 'wide'"),
            ("d_model_bool", "d_model must be an integer, got True"),
            ("n_layer_null", "n_layer must be an integer, got None"),
            ("tie_weights_str", "tie_weights must be true or false, got 'yes'"),
            ("lr_str", "lr must be a number, got 'fast'"),
            ("max_docs_float", "max_docs must be an integer, got 1.5"),
            ("arch_int", "arch must be a string, got 3"),
            ("dropout_list", "dropout must be a number, got [0.1]"),
            ("list", "must hold a JSON object"),
            ("junk", "is not valid JSON"),
        ]
    ),
    # 5. Devices this machine does not have, or torch does not know.
    case("device", "train", *TINY, "--out", "{W}/new", "--device", "cuda",
         message="no CUDA device", marks=NO_CUDA),
    case("device", "train", *TINY, "--out", "{W}/new", "--device", "mps",
         message="no MPS device", marks=NO_MPS),
    case("device", "train", *TINY, "--out", "{W}/new", "--device", "tpu",
         message="unknown device 'tpu'"),
    case("device", "generate", "--checkpoint", CKPT, "--device", "cuda",
         message="no CUDA device", marks=NO_CUDA),
    case("device", "generate", "--checkpoint", CKPT, "--device", "mps",
         message="no MPS device", marks=NO_MPS),
    case("device", "generate", "--checkpoint", CKPT, "--device", "tpu",
         message="unknown device 'tpu'"),
    case("device", "generate", "--checkpoint", CKPT, "--device", "cuda:x",
         message="unknown device 'cuda:x'"),
    search_case("device", "--gpus-per-trial", "1", message="needs a GPU", marks=NO_CUDA),
    search_case("device", "--cpus-per-trial", "100000", message="exceeds this machine"),
    # 6. Command-line text that is not UTF-8.
    case("utf8", "generate", "--checkpoint", CKPT, "--prompt", b"0 \xff\xfe", message="UTF-8"),
    case("utf8", "probe", "--checkpoint", CKPT, "--tokens", b"\xff", message="UTF-8"),
    case("utf8", "probe", "--checkpoint", CKPT, "--annotate", b"1 \xc3", message="UTF-8"),
    case("utf8", "train", *TINY, "--out", b"{W}/new\xff", message="UTF-8"),
    search_case("utf8", "--name", b"x\xff", message="UTF-8"),
    case("utf8", "report", RESULTS, "--arch", b"\xff", message="UTF-8"),
    # 7. Noise and side effects around the error.
    case("noise", "report", RESULTS, "--objectives", "val_loss,nope",
         message="nope is not a numeric column"),
    case("noise", "report", RESULTS, "--arch", "lstm,gru", message="gru"),
    case("noise", "train", *TINY, "--out", "{W}/new", "--block-size", "20000000",
         message="fewer than block_size"),
    case("noise", "probe", "--checkpoint", CKPT, "--tokens", "1", "--clusters", "999",
         message="--clusters must be in"),
    case("noise", "probe", "--checkpoint", CKPT, "--tokens", "1", "--compare", "{W}/nowhere",
         message="checkpoint folder not found"),
    case("noise", "generate", "--checkpoint", CKPT, "--neighbours", "999",
         message="--neighbours must be below"),
    # 8. Checks that must come before Ray starts.
    search_case("late", "--corpus", "{W}/missing.txt", message="missing.txt"),
    search_case("late", "--corpus", "{W}/empty.txt", message="empty.txt"),
    search_case("late", "--corpus", "nosuchcorpus", message="nosuchcorpus"),
    search_case("late", "--tokenizer", "wordpiece", message="wordpiece"),
    case("late", "search", "--storage", "{W}/experiments", "--name", "nope", "--resume",
         message="nothing to resume"),
    case("late", "search", "--storage", "{W}/damaged", "--name", "no_study", "--resume",
         message="study file"),
]
# fmt: on


def damage(run: Path, bad: Path) -> None:
    """Copies of `run`, each with one part of it broken, in `bad/<what is broken>`."""
    ckpt = Path("checkpoint")
    breakages = {
        "model_empty": (ckpt / "model.pt", b""),
        "model_cut": (ckpt / "model.pt", None),
        "trainer_empty": (ckpt / "trainer.pt", b""),
        "trainer_cut": (ckpt / "trainer.pt", None),
        "tokenizer_junk": (ckpt / "tokenizer" / "pico_tokenizer.json", b"{not json"),
        "config_junk": (ckpt / "config.json", b"\x00\x01 not json"),
        "config_types": (ckpt / "config.json", None),
        "config_list": (ckpt / "config.json", b"[]"),
        "meta_junk": (ckpt / "meta.json", b"{"),
        "meta_empty": (ckpt / "meta.json", b"{}"),
        "rng_junk": (ckpt / "rng.json", b"nope"),
        "metrics_cut": (Path("metrics.jsonl"), None),
        "model_pickle": (ckpt / "model.pt", None),
        "model_shapes": (ckpt / "model.pt", None),
        "model_tensor": (ckpt / "model.pt", None),
        "no_tokenizer": (ckpt / "tokenizer", None),
    }
    for name, (part, content) in breakages.items():
        folder = bad / name
        shutil.copytree(run, folder)
        path = folder / part
        if content is not None:
            path.write_bytes(content)
        elif name == "metrics_cut":  # the last record cut mid-line, as a crash leaves it
            path.write_bytes(path.read_bytes()[:-10])
        elif name.endswith("_cut"):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 1])
        elif name == "config_types":
            config = json.loads(path.read_text())
            path.write_text(json.dumps({**config, "d_model": "wide"}))
        elif name == "model_pickle":  # safe to refuse: not a plain tensor container
            torch.save({"weight": PurePosixPath("/etc/passwd")}, path)
        elif name == "model_shapes":
            torch.save({k: torch.zeros(3) for k in torch.load(path, weights_only=True)}, path)
        elif name == "model_tensor":
            torch.save(torch.zeros(3), path)
        elif name == "no_tokenizer":
            shutil.rmtree(path)


CONFIGS = {
    "d_model_str": {"d_model": "wide"},
    "d_model_bool": {"d_model": True},
    "n_layer_null": {"n_layer": None},
    "tie_weights_str": {"tie_weights": "yes"},
    "lr_str": {"lr": "fast"},
    "max_docs_float": {"max_docs": 1.5},
    "arch_int": {"arch": 3},
    "dropout_list": {"dropout": [0.1]},
    "list": [1, 2],
}


@pytest.fixture(scope="module")
def world(repo_root, tmp_path_factory) -> Path:
    """The folder every case runs against (see the module's docstring)."""
    root = tmp_path_factory.mktemp("world")
    run = root / "run"
    trained = command(repo_root, root, "train", "--arch", "kgram_mlp", "--out", run, "-q", *TINY)
    assert trained.returncode == 0, trained.stderr
    damage(run, root / "bad")
    results = make_results(root / "search" / "results.parquet", n_trials=6, n_evals=3)
    (results.parent / "report.html").write_text("<html>the search's report</html>")
    (root / "halfrun").mkdir()  # a run that stopped before its first evaluation
    (root / "halfrun" / "config.json").write_text((run / "config.json").read_text())
    (root / "afile").write_text("a file where a folder is expected")
    (root / "folder.json").mkdir()
    (root / "empty.txt").write_text("")
    (root / "empty.parquet").write_bytes(b"")
    (root / "cut.parquet").write_bytes(results.read_bytes()[:300])
    (root / "cfg").mkdir()
    for name, values in CONFIGS.items():
        (root / "cfg" / f"{name}.json").write_text(json.dumps(values))
    (root / "cfg" / "junk.json").write_text("{'d_model': 3}")
    damaged = root / "damaged"
    manifests = {"junk_manifest": "{", "list_manifest": "[]", "junk_study": "{}", "no_study": "{}"}
    for name, manifest in manifests.items():
        (damaged / name).mkdir(parents=True)
        (damaged / name / "experiment.json").write_text(manifest)
    (damaged / "junk_study" / "study.journal").write_bytes(b"not a journal\n" * 100)
    (root / "experiments").mkdir()
    (root / "cwd").mkdir()  # where commands run: a default output would land here
    return root


def command(repo_root: Path, world: Path, name: str, *args) -> subprocess.CompletedProcess:
    """Run one command as a user runs it, from `world/cwd`, with Ray's files inside `world`."""
    argv = [os.fsencode(a) if isinstance(a, Path) else a for a in args]
    argv = [a.replace(b"{W}", os.fsencode(world)) if isinstance(a, bytes) else a for a in argv]
    argv = [a.replace("{W}", str(world)) if isinstance(a, str) else a for a in argv]
    env = {**os.environ, "RAY_TMPDIR": str(world / "ray"), "PYTHONPATH": str(repo_root)}
    return subprocess.run(
        [sys.executable, str(repo_root / SCRIPTS[name]), *argv],
        capture_output=True,
        timeout=120,
        cwd=world / "cwd" if (world / "cwd").is_dir() else world,
        env=env,
    )


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("hostile", CASES, ids=lambda c: f"{c.kind}-{c.command}")
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(repo_root, world, hostile):
    before = snapshot(world)
    result = command(repo_root, world, hostile.command, *hostile.args)
    stderr = result.stderr.decode(errors="backslashreplace")
    assert result.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert hostile.message in lines[0], lines[0]
    assert result.stdout == b"", "printed before refusing"
    after = snapshot(world)
    assert sorted(set(after) - set(before)) == [], "created"
    assert sorted(set(before) - set(after)) == [], "removed"
    assert [p for p in before if before[p] != after[p]] == [], "changed"


def test_the_battery_covers_every_class_and_command():
    kinds = Counter(p.values[0].kind for p in CASES)
    commands = Counter(p.values[0].command for p in CASES)
    assert len(CASES) >= 60
    assert set(kinds) == {"overwrite", "damaged", "unwritable", "types", "device", "utf8",
                          "noise", "late"}  # fmt: skip
    assert set(commands) == set(SCRIPTS)


def test_generate_does_not_read_the_trainer_state(repo_root, world):
    """Only a resumed run needs trainer.pt: a checkpoint without a usable one still generates."""
    ckpt = world / "bad" / "trainer_empty" / "checkpoint"
    result = command(repo_root, world, "generate", "--checkpoint", ckpt, "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout
