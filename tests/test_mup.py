"""muP: the parametrization itself, its coordinate check, widening a trial, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from launch.results import ResultsTable
from pico.config import TrainConfig
from pico.coord_check import coord_check, size_slopes
from pico.data import prepare_data
from pico.errors import PicoError, run_cli
from pico.models import build_model
from pico.optim import lr_at, make_optimizer, set_lr
from pico.train import _Run, train

V = 11


def tf(**changes) -> TrainConfig:
    base = dict(d_model=64, n_layer=2, n_head=4, block_size=16, mup_base_width=64)
    return TrainConfig(**{**base, **changes}).validate()


def tokens(batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def data():
    """The synthetic 3seqs corpus with a character tokenizer: small and quick to prepare."""
    return prepare_data("3seqs", "char")


# ------------------------------------------------------------------ the parametrization


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("pos_embedding", ["rope", "learned"])
def test_at_the_base_width_mup_is_the_standard_model(tie_weights, pos_embedding):
    cfg = tf(tie_weights=tie_weights, pos_embedding=pos_embedding)
    torch.manual_seed(0)
    standard = build_model(cfg, V)
    torch.manual_seed(0)
    mup = build_model(cfg.replace(parametrization="mup"), V)
    for (name, a), (_, b) in zip(standard.named_parameters(), mup.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(standard(tokens())[0], mup(tokens())[0])
    groups = make_optimizer(mup, cfg, torch.device("cpu")).param_groups
    assert [g["lr"] for g in groups] == [cfg.lr, cfg.lr]


def test_a_wider_mup_model_scales_init_learning_rates_and_output():
    """Width 256 on base 64: ratio r = 1/4."""
    torch.manual_seed(0)
    cfg = tf(d_model=256, parametrization="mup")
    model = build_model(cfg, V)
    block = model.blocks[0]
    # Hidden matrices: std 0.02 * sqrt(r) (residual projections also / sqrt(2 * n_layer)).
    assert block.mlp.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(0.01 / 2, rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)  # embedding: kept
    # Attention: sqrt(base head size) / head size = sqrt(16) / 64, not 1 / sqrt(64).
    assert block.attn.scale == pytest.approx(4 / 64)
    # Output: the head's product times r.
    captured = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    torch.testing.assert_close(model(tokens())[0], captured[0] / 4)
    # Learning rates: hidden matrices at lr * r with weight decay / r; the rest as tuned.
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    scaled = {id(p) for g in optimizer.param_groups if g["lr_scale"] != 1 for p in g["params"]}
    for name, p in model.named_parameters():
        hidden = name.endswith(("qkv.weight", "attn.proj.weight", "fc.weight", "mlp.proj.weight"))
        assert (id(p) in scaled) == hidden, name
    for group in optimizer.param_groups:
        if group["lr_scale"] != 1:
            assert group["lr"] == pytest.approx(cfg.lr / 4)
            assert group["weight_decay"] == pytest.approx(cfg.weight_decay * 4)
        else:
            assert group["lr"] == cfg.lr


def test_an_optimizer_state_saved_before_lr_scales_loads_at_scale_1():
    cfg = tf()
    model = build_model(cfg, V)
    state = make_optimizer(model, cfg, torch.device("cpu")).state_dict()
    for group in state["param_groups"]:
        del group["lr_scale"]
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    optimizer.load_state_dict(state)
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]


def test_the_tied_head_stays_the_embedding_under_mup():
    model = build_model(tf(d_model=128, parametrization="mup"), V)
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "lstm", "parametrization": "mup"}, "Transformer only; arch='lstm'"),
        ({"arch": "kgram_mlp", "parametrization": "mup"}, "Transformer only; arch='kgram_mlp'"),
        ({"parametrization": "ntk"}, "unknown parametrization 'ntk'; choose one of: standard"),
        ({"mup_base_width": 0}, "mup_base_width must be a positive integer"),
    ],
)
def test_invalid_mup_configs_say_what_is_wrong(changes, message):
    with pytest.raises(PicoError) as info:
        TrainConfig(**changes).validate()
    assert message in str(info.value)


def test_fingerprint_counts_the_base_width_only_under_mup():
    standard = TrainConfig()
    assert standard.fingerprint() == standard.replace(mup_base_width=32).fingerprint()
    mup = standard.replace(parametrization="mup")
    assert mup.fingerprint() != standard.fingerprint()
    assert mup.fingerprint() != mup.replace(mup_base_width=32).fingerprint()


def test_widen_keeps_everything_but_the_width():
    cfg = tf(d_model=32, parametrization="mup", lr=0.01, n_head=4)
    wide = cfg.widen(256)
    assert wide == cfg.replace(d_model=256)
    with pytest.raises(PicoError, match="parametrization 'standard'"):
        tf().widen(128)
    with pytest.raises(PicoError, match="width 100 is not a positive multiple of n_head=8"):
        cfg.replace(n_head=8).widen(100)


def test_training_sets_each_group_its_scaled_rate_and_resumes_exactly(data, tmp_path):
    cfg = TrainConfig(
        corpus="3seqs", tokenizer="char", d_model=32, n_layer=1, n_head=2, block_size=16,
        batch_size=4, max_steps=8, eval_interval=4, eval_tokens=200, warmup_steps=2,
        parametrization="mup", mup_base_width=16, num_threads=1,
    ).validate()  # fmt: skip
    run = _Run(cfg, data, torch.device("cpu"))
    run.train_step()
    expected = lr_at(0, cfg)
    assert sorted(g["lr"] for g in run.optimizer.param_groups) == pytest.approx(
        [expected / 2, expected, expected]
    )
    records: list[dict] = []

    def keep(record, save):
        records.append(record)
        if record["step"] == 4:
            save(tmp_path / "ckpt")

    train(cfg, data, on_eval=keep)
    resumed: list[dict] = []
    train(cfg, data, on_eval=lambda r, s: resumed.append(r), resume_from=tmp_path / "ckpt")
    assert resumed[-1]["val_loss"] == records[-1]["val_loss"]


# ------------------------------------------------------------------ the coordinate check


def test_coordinate_check_is_flat_under_mup_and_grows_under_standard():
    """Widths 32..256 on muP base 32, 10 steps at the default lr, two seeds averaged.

    Tolerances from measurement (seed pairs 0-1 .. 8-9, docs/mup.md): under muP every layer but
    the attention logits stayed within 0.13 of flat and those within 0.43 (after 10 steps q.k
    is a small, noisy product of barely aligned updates); under the standard parametrization the
    logits' slope was 0.67 to 0.75 and the attention logits' 1.45 to 2.33 (either block).
    """
    data = prepare_data("shakespeare", "bpe:4096")
    cfg = TrainConfig(
        n_layer=2, n_head=4, batch_size=8, block_size=32, mup_base_width=32, num_threads=1
    )
    rows = []
    for parametrization in ("standard", "mup"):
        run_cfg = cfg.replace(parametrization=parametrization)
        rows += coord_check(run_cfg, data, widths=(32, 64, 128, 256), steps=10, seeds=(0, 1))
    slopes = size_slopes(rows)
    layers = {layer for _, layer in slopes}
    assert {"embedding", "block0.attn_logits", "block1.mlp_hidden", "logits"} <= layers
    for layer in layers:
        limit = 0.6 if layer.endswith("attn_logits") else 0.25
        assert abs(slopes["mup", layer]) < limit, (layer, slopes["mup", layer])
    assert slopes["standard", "logits"] > 0.5
    assert slopes["standard", "block0.attn_logits"] > 1.0
    # At init muP's logits shrink as 1/sqrt(width), by design: updates, not init, set them.
    assert size_slopes(rows, step=0)["mup", "logits"] == pytest.approx(-0.5, abs=0.05)


# ------------------------------------------------------------------ the commands


def call(main, args: list[str], capsys) -> tuple[int, str]:
    """Run a command's main in-process as run_cli does; (exit status, stderr)."""
    try:
        status = run_cli(main, [str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    return status, capsys.readouterr().err


def assert_bad_input(status: int, err: str, message: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


TINY = [
    "--corpus", "3seqs", "--tokenizer", "char", "--n-layer", "1", "--n-head", "2",
    "--block-size", "16", "--batch-size", "4", "--num-threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results file with one muP trial (00000) and one standard trial (00001)."""
    path = tmp_path_factory.mktemp("results") / "results.parquet"
    table = ResultsTable("exp", {})
    fields = dict(
        corpus="3seqs", tokenizer="char", d_model=16, n_layer=1, n_head=2, block_size=16,
        batch_size=4, max_steps=4, eval_interval=4, eval_tokens=64, lr=0.01, min_lr=0.001,
        mup_base_width=16, num_threads=1,
    )  # fmt: skip
    for trial_id, parametrization in (("00000", "mup"), ("00001", "standard")):
        config = TrainConfig(**fields, parametrization=parametrization).to_dict()
        table.trial(trial_id, config).status = "completed"
    pq.write_table(table.to_arrow(), path)
    return path


def test_train_widens_a_mup_trial(results, tmp_path, capsys):
    from launch.train import main

    out = tmp_path / "wide"
    args = ["--from-results", results, "--trial", "00000", "--width", "48", "--out", out, "-q"]
    status, err = call(main, args, capsys)
    assert status == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["d_model"], cfg["n_head"], cfg["mup_base_width"]) == (48, 2, 16)
    assert cfg["parametrization"] == "mup" and cfg["lr"] == 0.01
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "64"], "--width widens a search trial: pass it with --from-results"),
        (["--trial", "00001", "--width", "64"], "used the standard parametrization"),
        (["--trial", "00000", "--width", "63"], "width 63 is not a positive multiple of n_head=2"),
        (["--trial", "00000", "--width", "0"], "width 0 is not a positive multiple"),
        (["--trial", "00000", "--width", "6"], "rotary positions need an even head size"),
        (["--trial", "00000", "--width", "64", "--d-model", "64"], "pass one of --width and"),
        (["--trial", "00000", "--width", "64", "--resume"], "cannot be combined with --resume"),
        (["--trial", "00009", "--width", "64"], "no trial '00009'"),
        (["--trial", "00000", "--width", "wide"], "argument --width: invalid int value"),
    ],
)
def test_train_width_bad_input(results, tmp_path, capsys, args, message):
    from launch.train import main

    if args[0] != "--width":
        args = ["--from-results", results, *args]
    status, err = call(main, [*args, "--out", tmp_path / "run", "-q"], capsys)
    assert_bad_input(status, err, message)
    assert not (tmp_path / "run").exists()


def test_train_width_needs_an_existing_results_file(tmp_path, capsys):
    from launch.train import main

    args = ["--from-results", tmp_path / "none.parquet", "--trial", "0", "--width", "64"]
    status, err = call(main, [*args, "--out", tmp_path / "run"], capsys)
    assert_bad_input(status, err, "results file not found")


def test_coord_check_command_writes_numbers_and_chart(repo_root, tmp_path):
    out = tmp_path / "cc" / "check.json"
    args = [*TINY, "--widths", "16,32", "--steps", "2", "--seeds", "1", "--out", str(out)]
    command = [sys.executable, "launch/coord_check.py", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert result.returncode == 0, result.stderr
    assert "logits" in result.stdout and "wrote" in result.stdout
    report = json.loads(out.read_text())
    assert report["widths"] == [16, 32] and report["config"]["mup_base_width"] == 16
    assert set(report["slopes_at_last_step"]) == {"standard", "mup"}
    steps = {(r["parametrization"], r["width"], r["step"]) for r in report["rows"]}
    assert len(steps) == 2 * 2 * 3  # both parametrizations, both widths, steps 0..2
    html = out.with_suffix(".html").read_text()
    assert "vega" in html and "block0.attn_logits" in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--widths", "32"], "--widths needs at least two positive widths"),
        (["--widths", "32,x"], "--widths takes comma-separated integers"),
        (["--widths", "30,60"], "d_model=30 is not divisible by n_head=4"),
        (["--d-model", "64"], "--d-model is what the check varies"),
        (["--parametrization", "mup"], "--parametrization is what the check varies"),
        (["--arch", "lstm"], "the coordinate check is for the Transformer"),
        (["--device", "cuda"], "--device does not apply to the coordinate check"),
        (["--max-steps", "5"], "--max-steps does not apply to the coordinate check"),
        (["--steps", "0"], "--steps and --seeds must be positive"),
        (["--out", "{tmp}/check.csv"], "--out names a .json file"),
        (["--seeds", "0"], "--steps and --seeds must be positive"),
        (["--lr", "-1"], "lr must be positive"),
        (["--corpus", "nosuchcorpus"], "nosuchcorpus"),
    ],
)
def test_coord_check_bad_input(tmp_path, capsys, args, message):
    from pico.cli.coord_check import main

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "new" / "check.json")]
    before = sorted(tmp_path.rglob("*"))
    status, err = call(main, args, capsys)
    assert_bad_input(status, err, message)
    assert sorted(tmp_path.rglob("*")) == before


def test_lstm_and_kgram_refuse_mup_on_the_command_line(tmp_path, capsys):
    from launch.train import main

    for arch in ("lstm", "kgram_mlp"):
        args = [*TINY, "--arch", arch, "--parametrization", "mup", "--out", tmp_path / arch]
        status, err = call(main, args, capsys)
        assert_bad_input(status, err, "built for the Transformer only")
