"""pico/files.py: atomic writes keep the user's umask; output checks create nothing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from pico.errors import PicoError
from pico.files import check_output


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_write_atomic_gives_the_mode_an_ordinary_write_gives(tmp_path, umask):
    """Not the 0600 of the temporary file: a report must be servable under umask 022."""
    script = (
        "import os, sys; from pathlib import Path; from pico.files import write_atomic; "
        "write_atomic(Path(sys.argv[1]) / 'atomic', b'x'); "
        "Path(sys.argv[1], 'plain').write_bytes(b'x')"
    )
    subprocess.run(
        [sys.executable, "-c", f"import os; os.umask({umask}); {script}", str(tmp_path)],
        check=True,
    )
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("atomic", "plain")}
    assert modes["atomic"] == modes["plain"] == 0o666 & ~umask


def test_check_output_refuses_without_creating_anything(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(PicoError, match="lies under the file"):
        check_output(tmp_path / "afile" / "deep" / "x.html", "--out")
    check_output(tmp_path / "new" / "deeper" / "x.html", "--out")  # fine, and made nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
