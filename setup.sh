#!/usr/bin/env bash
# Install what Pico needs on a fresh machine: PyTorch (the CPU build unless one is installed),
# the project and its dev tools in editable mode, Chromium and rsync for tests, and
# PostgreSQL for the test of a study in a database.
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c "import torch" 2>/dev/null; then
    # A bare `torch` requirement would pull a multi-GB CUDA build; 2.13.0 is the CPU build.
    python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".[dev]"

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Chromium (for the browser tests of the report and dashboards)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# rsync, which `ray up` copies the project with: the cluster-config test replays that copy.
if ! command -v rsync >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing rsync (for the test of what cluster.yaml copies)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null
fi

# The PostgreSQL server, for the test that keeps a search's study in a database of its own.
postgres_server() {
    local bindir
    bindir="$(pg_config --bindir 2>/dev/null || true)"
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}
if ! postgres_server && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing PostgreSQL (for the test of a study in a database)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
echo "setup: done"
