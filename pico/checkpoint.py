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
import pickle
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


TRAINER_KEYS = ("step", "tokens_seen", "elapsed_s", "optimizer", "torch_rng", "batch_rng")
# What torch.load raises for a file that is truncated (OSError: EINVAL from its zip reader), empty,
# not a torch file, or holds objects that weights_only refuses (UnpicklingError).
_TORCH_LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError)


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a whole checkpoint, to resume from it; a missing, incomplete or damaged one is a
    PicoError naming the file."""
    folder = _checkpoint_folder(folder, CHECKPOINT_FILES)
    trainer_state = _torch_file(folder / "trainer.pt", map_location)
    missing = [key for key in TRAINER_KEYS if key not in trainer_state]
    if missing:
        raise PicoError(f"{folder / 'trainer.pt'} is damaged: it lacks {', '.join(missing)}")
    rng_state = _json_object(folder / "rng.json")
    if not {"python", "numpy"} <= set(rng_state):
        raise PicoError(f"{folder / 'rng.json'} is damaged: it lacks the python or numpy state")
    return Checkpoint(
        folder=folder,
        cfg=read_config(folder),
        model_state=_weights(folder / "model.pt", map_location),
        trainer_state=trainer_state,
        rng_state=rng_state,
        meta=read_meta(folder),
    )


def read_config(folder: str | Path) -> TrainConfig:
    """A checkpoint's TrainConfig alone, validated."""
    path = Path(folder) / "config.json"
    try:
        return TrainConfig.from_dict(_json_object(path)).validate()
    except PicoError as exc:
        if str(path) in str(exc):
            raise
        raise PicoError(f"{path} is damaged: {exc}") from None


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's meta.json alone (step, data fingerprint, metrics): no weights are read."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise PicoError(f"{folder} is not a Pico checkpoint (missing meta.json)")
    meta = _json_object(path)
    if not isinstance(meta.get("vocab_size"), int) or not isinstance(meta.get("step"), int):
        raise PicoError(f"{path} is damaged: it lacks an integer vocab_size or step")
    return meta


def load_model(folder: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the trained model and its tokenizer from a checkpoint, ready for decoding. Reads
    only what that needs: not the trainer's state.

    Returns `(model, cfg, tokenizer)`; the model is in eval mode on `device`.
    """
    from pico.data.tokenizers import load_tokenizer
    from pico.models import build_model

    folder = _checkpoint_folder(folder, ("config.json", "model.pt", "meta.json"))
    cfg, meta = read_config(folder), read_meta(folder)
    model = build_model(cfg, meta["vocab_size"])
    try:
        model.load_state_dict(_weights(folder / "model.pt", device))
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        reason = str(exc).splitlines()[0]
        raise PicoError(
            f"{folder / 'model.pt'} does not match config.json and meta.json: {reason}"
        ) from None
    model.to(device).eval()
    tokenizer_dir = folder / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    return model, cfg, tokenizer


def _checkpoint_folder(folder: str | Path, needed: tuple[str, ...]) -> Path:
    """`folder` as a Path, if it holds the files `needed`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PicoError(f"checkpoint folder not found: {folder}")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise PicoError(f"{folder} is not a Pico checkpoint (missing {', '.join(missing)})")
    return folder


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object."""
    try:
        value = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PicoError(f"{path} is damaged: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise PicoError(f"{path} is damaged: not a JSON object")
    return value


def _torch_file(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A dict saved with torch.save, loaded with weights_only (nothing else is unpickled)."""
    try:
        value = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # the message is a page on how to allow unsafe globals
        raise PicoError(
            f"{path} is damaged or not Pico's: it holds objects that a safe load refuses"
        ) from None
    except _TORCH_LOAD_ERRORS as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PicoError(f"{path} is damaged: {reason}") from None
    if not isinstance(value, dict):
        raise PicoError(f"{path} is damaged: it holds a {type(value).__name__}, not a dict")
    return value


def _weights(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """A model's state dict: tensors by name."""
    state = _torch_file(path, map_location)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PicoError(f"{path} is damaged: it holds more than tensors")
    return state
