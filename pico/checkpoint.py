"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a folder:
    config.json     the TrainConfig
    model.pt        model weights (the decoding cache is never part of them)
    trainer.pt      optimizer, step counters, torch RNG states, the batch sampler's generator
    rng.json        Python's and NumPy's RNG states (JSON, so that torch.load stays weights_only)
    meta.json       vocabulary size, data fingerprint, the metrics at this point
    tokenizer/      the tokenizer, so that generation and probes need nothing else

It is written to a temporary sibling and renamed into place: a crash mid-write leaves the previous
checkpoint untouched. It is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pico.config import TrainConfig
from pico.errors import PicoError

CHECKPOINT_FILES = ("config.json", "model.pt", "trainer.pt", "rng.json", "meta.json")


def capture_rng_state() -> dict[str, Any]:
    """Python and NumPy global RNG states as JSON-able values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    folder: str | Path,
    *,
    cfg: TrainConfig,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    tokenizer: Any = None,
) -> Path:
    """Write a checkpoint folder atomically; an existing checkpoint there is replaced whole."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "rng.json").write_text(json.dumps(capture_rng_state()))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=float))
    if tokenizer is not None:
        tokenizer.save(tmp / "tokenizer")
    _replace_folder(tmp, folder)
    return folder


def _replace_folder(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing whatever is there with as short a gap as renames allow."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    folder: Path
    cfg: TrainConfig
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]
    rng_state: dict[str, Any]
    meta: dict[str, Any]


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder; a missing or incomplete one is a PicoError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PicoError(f"checkpoint folder not found: {folder}")
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise PicoError(f"{folder} is not a Pico checkpoint (missing {', '.join(missing)})")
    return Checkpoint(
        folder=folder,
        cfg=TrainConfig.from_dict(json.loads((folder / "config.json").read_text())),
        model_state=torch.load(folder / "model.pt", map_location=map_location, weights_only=True),
        trainer_state=torch.load(
            folder / "trainer.pt", map_location=map_location, weights_only=True
        ),
        rng_state=json.loads((folder / "rng.json").read_text()),
        meta=json.loads((folder / "meta.json").read_text()),
    )


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's meta.json alone (step, data fingerprint, metrics): no weights are read."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise PicoError(f"{folder} is not a Pico checkpoint (missing meta.json)")
    return json.loads(path.read_text())


def load_model(folder: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the trained model and its tokenizer from a checkpoint, ready for decoding.

    Returns `(model, cfg, tokenizer)`; the model is in eval mode on `device`.
    """
    from pico.data.tokenizers import load_tokenizer
    from pico.models import build_model

    ckpt = load_checkpoint(folder, map_location=device)
    model = build_model(ckpt.cfg, ckpt.meta["vocab_size"])
    model.load_state_dict(ckpt.model_state)
    model.to(device).eval()
    tokenizer_dir = Path(folder) / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    return model, ckpt.cfg, tokenizer
