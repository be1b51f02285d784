"""`python launch/probe.py --help`. The logic lives in pico/cli/probe.py."""

import sys

from pico.cli.probe import main
from pico.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
