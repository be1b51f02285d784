"""Scale benchmark: the report of 10,000 trials x 50 evaluations (500,000 rows).

    python benchmarks/report_scale.py

Writes a synthetic results file (docs/results.md schema; every trial runs all 50 evaluations, so
the file has exactly 500,000 rows), then times `python analysis/report.py` on it as a separate
process: wall time from launch to exit, imports included, and that process's peak RSS. Prints
the peak RSS, then `report_scale_seconds: X.X` as the last line. Exits 1 if the report takes
more than 20 s or 2 GB.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis.synthetic import make_results

REPO = Path(__file__).resolve().parents[1]
N_TRIALS, N_EVALS = 10_000, 50
MAX_SECONDS, MAX_RSS_MB = 20.0, 2048.0


def main() -> int:
    """Generate the file, time the report, print the figures; 1 if over budget."""
    with tempfile.TemporaryDirectory() as tmp:
        results = make_results(
            Path(tmp) / "results.parquet", N_TRIALS, N_EVALS, asha=False, failures=False
        )
        command = [sys.executable, str(REPO / "analysis" / "report.py"), str(results)]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        html_mb = (Path(tmp) / "report.html").stat().st_size / 1e6
    # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN covers the report process only, since
    # the file was generated in this one.
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"rows: {N_TRIALS * N_EVALS}, report.html: {html_mb:.1f} MB")
    print(f"report_peak_rss_mb: {rss_mb:.0f}")
    print(f"report_scale_seconds: {seconds:.1f}")
    return 0 if seconds <= MAX_SECONDS and rss_mb <= MAX_RSS_MB else 1


if __name__ == "__main__":
    sys.exit(main())
