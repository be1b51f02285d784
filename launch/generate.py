"""`python launch/generate.py --help`. The logic lives in pico/cli/generate.py."""

import sys

from pico.cli.generate import main
from pico.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
