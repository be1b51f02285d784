"""The coordinate check: `python launch/coord_check.py --help`. The logic lives in
pico/cli/coord_check.py and pico/coord_check.py."""

import sys

from pico.cli.coord_check import main
from pico.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
