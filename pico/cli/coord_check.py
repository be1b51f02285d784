"""`launch/coord_check.py`: the coordinate check of the Transformer, standard vs muP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pico.cli.config_flags import add_config_flags, config_overrides
from pico.config import TrainConfig
from pico.errors import ArgumentParser, PicoError
from pico.files import check_output, write_atomic

PARAMETRIZATIONS = ("standard", "mup")
# Small batches keep the check quick; a few steps of them already separate the two. The learning
# rate is constant, so the schedule's floor plays no part (and must not refuse a small --lr).
DEFAULTS = {"batch_size": 8, "block_size": 32, "min_lr": 0.0}
VARIED = ("d_model", "parametrization")
# Training settings the check has no use for: it takes --steps updates at the constant --lr on
# the CPU, with no evaluation.
UNUSED = (
    "max_steps",
    "warmup_steps",
    "min_lr",
    "grad_accum",
    "eval_interval",
    "eval_tokens",
    "device",
    "dtype",
    "compile",
)


def build_parser() -> ArgumentParser:
    """The command's flags: widths, steps, seeds, outputs, then the Transformer's
    hyperparameters (those in VARIED and UNUSED are refused)."""
    parser = ArgumentParser(
        prog="launch/coord_check.py",
        description="Train the Transformer a few steps at each width under the standard "
        "parametrization and under muP, and chart each layer's activation size against width.",
        epilog="Example: python launch/coord_check.py --widths 32,64,128,256,512 "
        "--out runs/coord_check.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/coord_check.json"),
        help="the numbers (JSON); the chart goes beside it as .html [runs/coord_check.json]",
    )
    parser.add_argument("--widths", default="32,64,128,256,512", help="d_model values [32..512]")
    parser.add_argument("--steps", type=int, default=10, help="updates per run [10]")
    parser.add_argument("--seeds", type=int, default=2, help="runs per width, averaged [2]")
    parser.add_argument("--cache-dir", type=Path, help="prepared-data cache [$PICO_CACHE]")
    add_config_flags(parser)
    return parser


def parse_widths(text: str) -> list[int]:
    """`32,64,128` as sorted distinct widths; PicoError unless at least two positive integers."""
    try:
        widths = sorted({int(w) for w in text.split(",")})
    except ValueError:
        raise PicoError(f"--widths takes comma-separated integers, got {text!r}") from None
    if len(widths) < 2 or widths[0] < 1:
        raise PicoError(f"--widths needs at least two positive widths, got {text!r}")
    return widths


def check_config(overrides: dict[str, Any], widths: list[int]) -> TrainConfig:
    """The config the check varies the width of, validated at every width and in both
    parametrizations. muP's base width defaults to the narrowest width."""
    for name in overrides:
        flag = "--" + name.replace("_", "-")
        if name in VARIED:
            raise PicoError(f"{flag} is what the check varies: drop it (see --widths)")
        if name in UNUSED:
            raise PicoError(
                f"{flag} does not apply to the coordinate check, which takes --steps updates at "
                "the constant --lr on the CPU: drop it"
            )
    cfg = TrainConfig(**DEFAULTS, mup_base_width=widths[0]).replace(**overrides)
    if cfg.arch != "kv_transformer":
        raise PicoError(f"the coordinate check is for the Transformer, got --arch {cfg.arch}")
    for width in widths:
        for parametrization in PARAMETRIZATIONS:
            cfg.replace(d_model=width, parametrization=parametrization).validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Run the check (on the CPU), write the numbers and the chart, print the slopes."""
    from pico.coord_check import coord_check, size_slopes
    from pico.data import prepare_data
    from pico.train import check_split_fits

    args = build_parser().parse_args(argv)
    widths = parse_widths(args.widths)
    if args.steps < 1 or args.seeds < 1:
        raise PicoError(f"--steps and --seeds must be positive, got {args.steps}, {args.seeds}")
    if args.out.suffix != ".json":
        raise PicoError(f"--out names a .json file, got {args.out}")
    chart_path = args.out.with_suffix(".html")
    check_output(args.out, "--out")
    check_output(chart_path, "--out (its chart)")
    cfg = check_config(config_overrides(args), widths)
    data = prepare_data(cfg.corpus, cfg.tokenizer, cache_dir=args.cache_dir, max_docs=cfg.max_docs)
    check_split_fits(len(data.train), cfg)

    seeds = range(cfg.seed, cfg.seed + args.seeds)
    rows = []
    for parametrization in PARAMETRIZATIONS:
        run_cfg = cfg.replace(parametrization=parametrization)
        rows += coord_check(run_cfg, data, widths, args.steps, seeds)
    slopes = size_slopes(rows)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    report = {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("d_model", "seed")},
        "widths": widths,
        "steps": args.steps,
        "seeds": list(seeds),
        "slopes_at_last_step": {
            p: {layer: slopes[p, layer] for layer in layers} for p in PARAMETRIZATIONS
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(report, indent=1))
    write_atomic(chart_path, coord_chart(rows, args.steps).to_html(inline=True))
    print(f"slope of log(activation size) against log(width) after {args.steps} steps:")
    print(f"  {'layer':<20} {'standard':>9} {'mup':>9}")
    for layer in layers:
        print(f"  {layer:<20} {slopes['standard', layer]:>+9.2f} {slopes['mup', layer]:>+9.2f}")
    print(f"wrote {args.out} and {chart_path}")
    return 0


def coord_chart(rows: list[dict[str, Any]], steps: int) -> Any:
    """One panel per layer: seed-mean activation size against width, log-log, at init (dashed)
    and after the last step, one colour per parametrization."""
    import altair as alt
    import pandas as pd

    df = pd.DataFrame(rows)
    layers = list(dict.fromkeys(df["layer"]))  # in forward order
    df = df[df["step"].isin((0, steps))]
    df = df.groupby(["parametrization", "layer", "width", "step"], as_index=False)["size"].mean()
    when = ["at init", f"after {steps} steps"]
    df["when"] = df["step"].map({0: when[0], steps: when[1]})
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("width:Q", scale=alt.Scale(type="log", base=2), title="width (d_model)"),
            y=alt.Y("size:Q", scale=alt.Scale(type="log"), title="mean |activation|"),
            color=alt.Color("parametrization:N"),
            strokeDash=alt.StrokeDash(
                "when:N",
                scale=alt.Scale(domain=when, range=[[4, 3], [1, 0]]),
                legend=None,  # said in the title: a legend of dashes on lines with points is blank
            ),
            tooltip=[
                "parametrization",
                "layer",
                "width",
                "when",
                alt.Tooltip("size", format=".3g"),
            ],
        )
        .properties(width=180, height=140)
        .facet(facet=alt.Facet("layer:N", sort=layers), columns=4)
        .resolve_scale(y="independent")
        .properties(
            title=f"Coordinate check: activation size against width, dashed at init, solid after "
            f"{steps} steps (flat is muP's aim)"
        )
    )
