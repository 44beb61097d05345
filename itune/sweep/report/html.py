"""report.html: a self-contained page (no external files or scripts) with the summary, the inline SVG
trade-off scatter (hover a point for its run) and the table of runs."""

from __future__ import annotations

import html

from itune.sweep.report.plots import svg_scatter
from itune.sweep.report.render import axes, counts_line, table_rows
from itune.sweep.report.select import Report

STYLE = """
body { font-family: sans-serif; margin: 24px; } table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ddd; padding: 3px 6px; } th { background: #f3f3f3; position: sticky; top: 0; }
tr.failed td { background: #fde2e2; } tr.pruned td { color: #777; }
tr.unfinished td, tr.interrupted td, tr.pending td { background: #fff6d5; }
tr.pick td { font-weight: bold; background: #e6f4e6; } circle:hover { fill-opacity: 1; stroke: #000; }
"""


def to_html(report: Report) -> str:
    """A self-contained page (no external files or scripts): summary, scatter with hover, table."""
    rows = table_rows(report)
    header = list(rows[0]) if rows else []
    body = []
    for row in rows:
        cls = row["status"] + (" pick" if row["recommended"] else "")
        body.append(
            f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(row[h]))}</td>" for h in header) + "</tr>"
        )
    front = html.escape(", ".join(report.front) or "-")
    notes = "".join(f"<li>note: {html.escape(note)}</li>" for note in report.notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>itune sweep report</title>
<style>{STYLE}</style></head><body>
<h1>Sweep report</h1>
<ul>
<li>runs: {len(report.runs)} ({html.escape(counts_line(report))})</li>
<li>swept: {html.escape(", ".join(report.swept) or "(nothing varies)")}</li>
<li>Pareto front ({html.escape(axes(report))}): {front}</li>
<li>criterion: {html.escape(report.criterion)}</li>
<li><b>recommended: {html.escape(report.recommended or "none")}</b> ({html.escape(report.reason)})</li>
{notes}
</ul>
<p>Hover a point for its run, overrides and metrics. Red: the Pareto front; outlined: the recommended run.</p>
{svg_scatter(report)}
<h2>Runs</h2>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>
{chr(10).join(body)}
</table></body></html>
"""
