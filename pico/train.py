"""The one training loop for every architecture.

    result = train(cfg, data, on_eval=callback)

Every `eval_interval` steps (and at the last step) the model is scored on the fixed evaluation
set and the flat metrics record (see pico/metrics.py) is handed to `on_eval(record, save)`, where
`save(folder)` writes a checkpoint from which `train(..., resume_from=folder)` continues exactly as
an uninterrupted run would. A NaN or infinite loss ends the run, at the evaluation that follows it,
with status "diverged": the last record carries `diverged=True` and nothing is raised.
"""

from __future__ import annotations

import functools
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pico.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from pico.config import TrainConfig
from pico.errors import PicoError
from pico.metrics import build_eval_set, evaluate, training_record
from pico.models import build_model
from pico.optim import lr_at, make_optimizer, set_lr

SaveCheckpoint = Callable[[Path], Path]
EvalCallback = Callable[[dict[str, Any], SaveCheckpoint], None]
LOG_PROGRESS_INTERVAL_S = 10.0  # seconds between progress lines when stderr is not a terminal


class TrainingData(Protocol):
    """What the loop needs of prepared data (pico.data.PreparedData has it)."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer: Any
    fingerprint: str


@dataclass
class TrainResult:
    """How a run ended: "completed" or "diverged", with its last metrics record."""

    status: str
    metrics: dict[str, Any]
    model: torch.nn.Module = field(repr=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a CPU run is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """Map "auto" to the best available device; PicoError for a device torch does not know or
    this machine does not have (torch would fail later, mid-work, with a traceback)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise PicoError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and (device.index or 0) >= max(1, torch.cuda.device_count()):
        raise PicoError(f"device {name!r}: this machine has no such CUDA device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PicoError(f"device {name!r}: this machine has no CUDA device; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PicoError(f"device {name!r}: this machine has no MPS device; use cpu or auto")
    return device


def check_split_fits(n_tokens: int, cfg: TrainConfig) -> None:
    """PicoError unless a training split of `n_tokens` holds one window of `cfg.block_size`."""
    if n_tokens <= cfg.block_size + 1:
        raise PicoError(
            f"the training split has {n_tokens} tokens, fewer than block_size+2="
            f"{cfg.block_size + 2}: use a larger corpus or a smaller block size"
        )


class BatchSampler:
    """Random training windows, drawn from a generator of its own so that resume is exact."""

    def __init__(self, tokens: np.ndarray, cfg: TrainConfig, device: torch.device):
        check_split_fits(len(tokens), cfg)
        self.tokens = tokens
        self.block_size = cfg.block_size
        self.batch_size = cfg.batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of inputs and next-token targets, (batch_size, block_size) each."""
        high = len(self.tokens) - self.block_size - 1
        starts = torch.randint(high, (self.batch_size,), generator=self.generator).tolist()
        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts])
        batch = torch.from_numpy(rows.astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]


def train(
    cfg: TrainConfig,
    data: TrainingData,
    *,
    on_eval: EvalCallback | None = None,
    resume_from: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one model from `cfg` on `data`; see the module docstring for the protocol."""
    cfg.validate()
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = _Run(cfg, data, resolve_device(cfg.device))
    if resume_from is not None:
        run.restore(resume_from)
    bar = _progress_bar(cfg, run.counters["step"]) if progress else None

    status, record = "completed", {}
    run.start_clock()
    while run.counters["step"] < cfg.max_steps:
        run.train_step()
        if bar is not None:
            bar.update(1)
        step = run.counters["step"]
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            record = run.evaluate()
            save = functools.partial(run.save, record=dict(record))
            if out_dir is not None:
                _write_outputs(Path(out_dir), record, save)
            if on_eval is not None:
                on_eval(record, save)
            if bar is not None:
                bar.write(_format_record(record))
            if record["diverged"]:
                status = "diverged"
                break
            run.start_clock()  # the callbacks' time (checkpoints, reports) is not training
    if bar is not None:
        bar.close()
    return TrainResult(status=status, metrics=record, model=run.model)


class _Run:
    """The live state of one run: model, optimizer, sampler, counters and timers."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.model = build_model(cfg, data.vocab_size).to(device)
        # Compile only the training path; evaluation and decoding use the plain module.
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.batches = BatchSampler(data.train, cfg, device)
        self.eval_set = build_eval_set(data.val, cfg.block_size, cfg.eval_tokens)
        self.autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        self.counters: dict[str, Any] = {"step": 0, "tokens_seen": 0, "elapsed_s": 0.0}
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
        self.wall_start = time.perf_counter()
        self.window_start = self.wall_start  # restarted by start_clock before each window
        self._reset_window()

    def _reset_window(self) -> None:
        """Start a new window over which train_loss and tokens_per_s are averaged."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.grad_norm = torch.full((), float("nan"), device=self.device)
        self.lr = float("nan")

    def start_clock(self) -> None:
        """Start timing the window's training for tokens_per_s. train() calls it right before
        the window's first step: what runs between two windows (the evaluation's callbacks, which
        log, save checkpoints and report to a search driver) is not training."""
        self.window_start = time.perf_counter()

    def train_step(self) -> None:
        """One optimizer step. Nothing here waits for the device: the loss and gradient norm
        stay tensors until the next evaluation reads them, so GPU work queues up unbroken."""
        self.lr = lr_at(self.counters["step"], self.cfg)
        set_lr(self.optimizer, self.lr)
        loss = _accumulate_gradients(
            self.step_model, self.batches, self.cfg, self.device, self.autocast_dtype
        )
        self.grad_norm = _clip(self.model, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum += loss
        self.loss_count += 1
        self.counters["step"] += 1
        self.counters["tokens_seen"] += self.tokens_per_step

    def evaluate(self) -> dict[str, Any]:
        """Close the training window, score on the fixed evaluation set and build the record.

        A window whose loss or gradient norm is not finite has diverged: it is not scored (its
        metrics are NaN) and the record says `diverged`. Divergence is therefore noticed at the
        evaluation that follows it, at most `eval_interval` steps late.
        """
        _synchronize(self.device)
        train_time = time.perf_counter() - self.window_start
        train_loss = float(self.loss_sum) / self.loss_count
        grad_norm = float(self.grad_norm)
        scores = None
        if np.isfinite(train_loss) and np.isfinite(grad_norm):
            scores = evaluate(
                self.model,
                self.eval_set,
                self.data.tokenizer.token_bytes,
                batch_size=self.cfg.batch_size,
                device=self.device,
                autocast_dtype=self.autocast_dtype,
            )
        self.counters["elapsed_s"] = time.perf_counter() - self.wall_start
        record = training_record(
            model=self.model,
            counters=self.counters,
            train_loss=train_loss,
            scores=scores,
            grad_norm=grad_norm,
            lr=self.lr,
            tokens_per_s=self.loss_count * self.tokens_per_step / max(train_time, 1e-9),
        )
        self._reset_window()
        return record

    def save(self, folder: str | Path, record: dict[str, Any]) -> Path:
        """Checkpoint everything needed to continue exactly from here."""
        trainer_state = {
            **self.counters,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "batch_rng": self.batches.generator.get_state(),
        }
        meta = {"vocab_size": self.data.vocab_size, "data_fingerprint": self.data.fingerprint}
        return save_checkpoint(
            folder,
            cfg=self.cfg,
            model=self.model,
            trainer_state=trainer_state,
            meta={**meta, **record},
            tokenizer=self.data.tokenizer,
        )

    def restore(self, folder: str | Path) -> None:
        """Load a checkpoint into the live objects, RNG states and counters included."""
        ckpt = load_checkpoint(folder, map_location=self.device)
        self.model.load_state_dict(ckpt.model_state)
        state = ckpt.trainer_state
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.batches.generator.set_state(state["batch_rng"].cpu())
        restore_rng_state(ckpt.rng_state)
        self.counters = {key: state[key] for key in ("step", "tokens_seen", "elapsed_s")}
        # Wall time continues from where the checkpointed run stood.
        self.wall_start = time.perf_counter() - self.counters["elapsed_s"]
        self._reset_window()


def _accumulate_gradients(
    model: torch.nn.Module,
    batches: BatchSampler,
    cfg: TrainConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> float:
    """Forward and backward over `grad_accum` micro-batches; their mean loss, detached."""
    total = torch.zeros((), device=device)
    for _ in range(cfg.grad_accum):
        x, y = batches.next()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            _, loss = model(x, y)
        (loss / cfg.grad_accum).backward()
        total += loss.detach().float()
    return total / cfg.grad_accum


def _clip(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm before clipping (a tensor); clip to `max_norm` unless it is 0."""
    limit = max_norm if max_norm > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(model.parameters(), limit)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_outputs(out_dir: Path, record: dict[str, Any], save: SaveCheckpoint) -> None:
    """Append the record to metrics.jsonl and refresh the checkpoint in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    save(out_dir / "checkpoint")


def _progress_bar(cfg: TrainConfig, start: int) -> Any:
    """A tqdm bar on a terminal; in a log file, a plain progress line every few seconds."""
    desc = f"train {cfg.arch}"
    if not sys.stderr.isatty():
        return LogProgress(cfg.max_steps, start, desc)
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_steps, initial=start, desc=desc, unit="step")


class LogProgress:
    """Training progress for a log: one plain line on stderr every `interval_s` seconds and one
    at the end. A progress bar's carriage-return updates would pile up on one line of the file.
    Like tqdm, `write` prints a line to stdout."""

    def __init__(
        self,
        total: int,
        start: int,
        desc: str,
        interval_s: float = LOG_PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.interval_s, self.clock = total, desc, interval_s, clock
        self.n = self.shown = self.start = start
        self.started_at = self.shown_at = clock()

    def update(self, n: int = 1) -> None:
        """Count `n` more steps; print a line if the last one is `interval_s` old."""
        self.n += n
        now = self.clock()
        if now - self.shown_at >= self.interval_s:
            self._show(now)

    def write(self, line: str) -> None:
        """Print one line to stdout."""
        print(line, flush=True)

    def close(self) -> None:
        """Print the final count unless the last line already showed it."""
        if self.n != self.shown:
            self._show(self.clock())

    def _show(self, now: float) -> None:
        elapsed = now - self.started_at
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        left = f", {(self.total - self.n) / rate:.0f} s left" if rate > 0 else ""
        print(
            f"{self.desc}: step {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), "
            f"{rate:.1f} steps/s, {elapsed:.0f} s{left}",
            file=sys.stderr,
            flush=True,
        )
        self.shown, self.shown_at = self.n, now


def _format_record(record: dict[str, Any]) -> str:
    if record["diverged"]:
        return f"step {record['step']}: diverged (train_loss={record['train_loss']})"
    return (
        f"step {record['step']:>6}  train_loss {record['train_loss']:.4f}  "
        f"val_loss {record['val_loss']:.4f}  ppl {record['perplexity']:.2f}  "
        f"acc {record['token_accuracy']:.3f}  bpb {record['val_bpb']:.3f}  "
        f"{record['tokens_per_s']:.0f} tok/s"
    )
