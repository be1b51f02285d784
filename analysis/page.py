"""The report page: one offline HTML file with the Vega libraries inlined once, plus PNGs.

Every file is written to a temporary name beside its target and moved into place with
`os.replace`, so a run that fails never leaves a half-written report over a good one.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import vl_convert

from pico.files import write_atomic

# Catch every script error and every failed chart, and write it into the page itself, so that a
# headless browser's DOM dump (and a reader) sees it; each chart div is flagged once rendered.
ERROR_HOOK = """
function picoError(message) {
  var list = document.getElementById('pico-errors');
  var item = document.createElement('li');
  item.textContent = String(message && message.message ? message.message : message);
  list.appendChild(item);
  list.parentNode.hidden = false;
}
window.addEventListener('error', function (e) { picoError(e.message); });
window.addEventListener('unhandledrejection', function (e) { picoError(e.reason); });
"""
EMBED = """
for (const [id, spec] of Object.entries(PICO_SPECS)) {
  const el = document.getElementById(id);
  vegaEmbed(el, spec, {actions: false, renderer: 'canvas'})
    .then(function () { el.dataset.rendered = 'true'; })
    .catch(function (err) { picoError(id + ': ' + err); });
}
"""
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1500px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-top: 1em; }
.meta { color: #555; } .chart { margin: 1.2em 0; overflow-x: auto; }
.notes { background: #fff8e1; border: 1px solid #f0c36d; padding: 0.5em 1em; }
.errors { background: #fdecea; border: 1px solid #e57373; padding: 0.5em 1em; }
.warning { background: #fff3e0; border-left: 4px solid #ef6c00; padding: 0.4em 0.8em; }
.answer { background: #f1f8e9; border: 1px solid #9ccc65; padding: 0.5em 1em;
          white-space: pre-wrap; font: 13px/1.5 ui-monospace, monospace; }
table.pico-table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
.pico-table th, .pico-table td { border: 1px solid #ddd; padding: 3px 8px; text-align: left;
                                 vertical-align: top; }
.pico-table caption { text-align: left; font-weight: bold; padding: 4px 0; }
.pico-table td:last-child { font-family: ui-monospace, monospace; font-size: 12px; }
nav a { margin-right: 1em; }
"""


@dataclass
class Figure:
    """One chart: its file-safe name (HTML id and PNG name) and its Vega-Lite spec."""

    name: str
    spec: dict

    @classmethod
    def of(cls, name: str, chart: alt.TopLevelMixin) -> Figure:
        """Convert (and validate) the chart once; the page and the PNG share the spec."""
        return cls(name, chart.to_dict())


@dataclass
class Section:
    """A heading, a paragraph saying how to read it, then figures and HTML tables in order."""

    title: str
    intro: str
    items: list[Figure | str] = field(default_factory=list)

    @property
    def figures(self) -> list[Figure]:
        """The section's charts."""
        return [item for item in self.items if isinstance(item, Figure)]


def vega_lite_version() -> str | None:
    """The Vega-Lite version Altair writes (e.g. '6.4'), if vl-convert bundles it."""
    wanted = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]
    return wanted if wanted in vl_convert.get_vegalite_versions() else None


def render_page(
    title: str, summary: str, notes: list[str], sections: list[Section], png_dir_rel: str
) -> str:
    """The whole report page as one HTML string, with no external resource."""
    specs = {f.name: f.spec for s in sections for f in s.figures}
    bundle = vl_convert.javascript_bundle(vl_version=vega_lite_version())
    nav = "".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(_section_html(s, png_dir_rel) for s in sections)
    notes_html = ""
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        notes_html = (
            '<div class="notes" id="pico-notes"><strong>What this report could not draw, '
            f"or left out, and why</strong><ul>{items}</ul></div>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script>{ERROR_HOOK}</script>
<script>{bundle}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{summary}</p>
<div class="errors" hidden><strong>Chart errors</strong><ul id="pico-errors"></ul></div>
{notes_html}
<nav>{nav}</nav>
{body}
<script>const PICO_SPECS = {_script_json(specs)};
{EMBED}</script>
</body></html>
"""


def write_pngs(figures: list[Figure], png_dir: Path, log: Callable[[str], None]) -> list[Path]:
    """Render each figure to `<png_dir>/<name>.png` (vl-convert, no browser)."""
    png_dir.mkdir(parents=True, exist_ok=True)
    version = vega_lite_version()
    paths = []
    # One at a time: vl-convert runs one JavaScript engine, so threads measured no faster.
    for figure in figures:
        path = png_dir / f"{figure.name}.png"
        write_atomic(path, vl_convert.vegalite_to_png(figure.spec, vl_version=version))
        paths.append(path)
    log(f"wrote {len(paths)} PNGs to {png_dir}")
    return paths


def warning(text: str) -> str:
    """A plain warning paragraph for a section: read this before trusting the chart below."""
    return f'<p class="warning"><strong>Warning:</strong> {html.escape(text)}</p>'


def answer(lines: list[str]) -> str:
    """The confirmation stage's answer, as the search prints it."""
    return f'<pre class="answer">{html.escape(chr(10).join(lines))}</pre>'


def _section_html(section: Section, png_dir_rel: str) -> str:
    parts = [f'<h2 id="{_anchor(section.title)}">{html.escape(section.title)}</h2>']
    parts.append(f"<p>{section.intro}</p>")
    for item in section.items:
        if isinstance(item, Figure):
            png = html.escape(f"{png_dir_rel}/{item.name}.png")
            parts.append(
                f'<div class="chart"><div class="pico-chart" id="{item.name}"></div>'
                f'<div class="meta"><a href="{png}">PNG</a></div></div>'
            )
        else:
            parts.append(item)
    return f"<section>{''.join(parts)}</section>"


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


def _script_json(value: object) -> str:
    """JSON that is safe inside a <script> element: no '<' is left to close or comment it."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")
