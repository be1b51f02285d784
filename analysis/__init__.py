"""Turn one results Parquet file (docs/results.md) into a self-contained HTML report.

`load` reads and validates the file, `pareto`, `importance` and `regression` compute, `charts_*`
draw with Altair, `tables` format HTML tables and `build` assembles the page and the PNGs.
Nothing here imports Ray or torch: the report needs only the Parquet file.
"""
