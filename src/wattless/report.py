"""`wattless report DIR`: DIR/report.html from DIR/results.json alone, readable at a glance, opened from disk.

    build_report("runs/s1")   # -> runs/s1/report.html, with frontier.png, breakdown.png, contributions.png

The page is self-contained (plots inlined as PNG data URIs, no script or style from the network): the
frontier plot (metric against estimated joules per inference, log scale, the baselines marked), the
baselines and frontier tables (metric, energy on every built-in target, size, estimated latency, the
recipe), the per-unit energy of a chosen point (the lowest-energy one within one metric point of fp32)
and how each technique contributed to its saving. Nothing is re-run: rebuilding reads results.json only.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from wattless.baselines import describe_ptq, ptq_summary
from wattless.errors import SearchError
from wattless.units import format_bytes, format_joules, format_seconds

__all__ = ["build_report", "format_joules", "recipe_summary", "REPORT_FILE", "PLOTS"]

REPORT_FILE = "report.html"
PLOTS = ("frontier.png", "breakdown.png", "contributions.png")
_PTQ_COLORS = {"torch-dynamic-int8": "#d95f02", "ort-dynamic-int8": "#7570b3", "ort-static-int8": "#e7298a"}


def _metric(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if name == "accuracy" else f"{value:.4f}"


def _joule_scale(values: list[float]) -> tuple[float, str]:
    """A unit that keeps the plotted energies readable: (factor, name)."""
    low = min(v for v in values if v > 0) if any(v > 0 for v in values) else 1.0
    for factor, name in ((1e-9, "nJ"), (1e-6, "µJ"), (1e-3, "mJ"), (1.0, "J")):
        if low < factor * 1000:
            return factor, name
    return 1.0, "J"


def recipe_summary(recipe: dict[str, Any]) -> str:
    """One line: what the recipe does, technique by technique."""
    parts = []
    for p in recipe.get("prune", []):
        level = "2:4" if p["pattern"] == "n:m" else f"{p.get('sparsity', 0):.2f}"
        parts.append(f"prune {p['pattern']} {level}")
    q = recipe.get("quantize")
    if q:
        w, a = q.get("weight_bits", 8), q.get("act_bits")
        bits = f"w{w}a{a or 'fp'}"
        # an override gives some bits; the others are the config's (written out, it keeps only the given ones)
        extra = ", ".join(f"{k}: w{v.get('weight_bits', w)}a{v.get('act_bits', a) or 'fp'}"
                          for k, v in q.get("overrides", {}).items())
        how = [extra] if extra else []
        if q.get("act_granularity") == "token":
            how.append("per-token activations")
        if q.get("smooth") is not None:
            how.append(f"SmoothQuant {q['smooth']:g}")
        parts.append(f"QAT {bits}" + (f" ({'; '.join(how)})" if how else ""))
    if recipe.get("moe"):
        parts.append(f"MoE {recipe['moe']['experts']} experts top-{recipe['moe'].get('top_k', 1)}")
    if recipe.get("early_exit"):
        e = recipe["early_exit"]
        parts.append(f"exit after {', '.join(e['after'])} (drop <= {e.get('target_accuracy_drop', 0.01):.3f})")
    if recipe.get("act_sparsity"):
        parts.append(f"act L1 {recipe['act_sparsity'].get('l1', 0):.1e}")
    if recipe.get("distill"):
        parts.append("distilled")
    objective = recipe.get("objective", {})
    if objective.get("energy_weight"):
        parts.append(f"λ {objective['energy_weight']:.3g}")
    if objective.get("energy_budget_uj"):
        parts.append(f"budget {objective['energy_budget_uj']:.3g} µJ")
    epochs = recipe.get("train", {}).get("epochs")
    if epochs:
        parts.append(f"{epochs} epochs")
    return " · ".join(parts) or "dense"


# --- plots --------------------------------------------------------------------------------------------------

def _figure(width: float = 8.0, height: float = 5.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _chosen(results: dict[str, Any]) -> dict[str, Any] | None:
    """The summary's point, else the frontier's best metric (nothing within one point of fp32 yet)."""
    frontier = results.get("frontier") or []
    number = (results.get("summary") or {}).get("chosen_trial")
    found = next((p for p in frontier if p["trial"] == number), None)
    return found or (max(frontier, key=lambda p: p["metric"]) if frontier else None)


def _frontier_plot(results: dict[str, Any]) -> bytes:
    t, name = results["target"], results["metric_name"]
    scale_y = 100.0 if name == "accuracy" else 1.0
    baselines = {k: b for k, b in results.get("baselines", {}).items() if b.get("metric") is not None}
    trials = [r for r in results.get("trials", []) if r.get("metric") is not None and r.get("energy_j")]
    frontier = results.get("frontier") or []
    energies = [r["energy_j"] for r in trials] + [b["energy_j"][t] for b in baselines.values()] or [1e-9]
    factor, unit = _joule_scale(energies)
    fig, ax = _figure()
    kept = [r for r in trials if r.get("feasible") is not False]
    off = [r for r in trials if r.get("feasible") is False]
    ax.scatter([r["energy_j"] / factor for r in kept], [r["metric"] * scale_y for r in kept], s=22, color="#bbbbbb",
               label="trials", zorder=2)
    if off:
        ax.scatter([r["energy_j"] / factor for r in off], [r["metric"] * scale_y for r in off], s=26, marker="x",
                   color="#999999", label="trials outside the constraints", zorder=2)
    if frontier:
        xs, ys = [p["energy_j"][t] / factor for p in frontier], [p["metric"] * scale_y for p in frontier]
        ax.step(xs, ys, where="post", color="#1b9e77", lw=1.5, zorder=3)
        ax.scatter(xs, ys, s=40, color="#1b9e77", label="frontier", zorder=4)
        for p, x, y in zip(frontier, xs, ys):
            ax.annotate(f"#{p['trial']}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="#1b9e77")
    chosen = _chosen(results)
    if chosen is not None:
        ax.scatter([chosen["energy_j"][t] / factor], [chosen["metric"] * scale_y], s=220, marker="*", color="#e6ab02",
                   edgecolor="black", label=f"chosen: trial {chosen['trial']}", zorder=5)
    for bname, b in baselines.items():
        marker, color = ("s", "black") if bname == "fp32" else ("^", _PTQ_COLORS.get(bname, "#666666"))
        ax.scatter([b["energy_j"][t] / factor], [b["metric"] * scale_y], s=70, marker=marker, color=color,
                   label=bname, zorder=5)
    fp32 = baselines.get("fp32")
    if fp32 is not None:
        within = (results.get("summary") or {}).get("within", 0.01)
        ax.axhline((fp32["metric"] - within) * scale_y, color="black", lw=0.8, ls="--", zorder=1,
                   label=f"fp32 - {within * scale_y:g} point")
    ax.set_xscale("log")
    ax.set_xlabel(f"energy per inference ({unit}, estimated on {t}; log scale)")
    ax.set_ylabel(f"{name} (%)" if name == "accuracy" else name)
    ax.set_title(f"{results['workload']} on {t}: {name} against estimated energy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _breakdown_plot(point: dict[str, Any], target: str) -> bytes:
    units = [u for u in point.get("breakdown", []) if u["energy_j"] > 0][::-1]
    factor, unit = _joule_scale([u["energy_j"] for u in units] or [1e-12])
    factor, unit = (factor / 1000, {"nJ": "pJ", "µJ": "nJ", "mJ": "µJ", "J": "mJ"}[unit]) if units else (factor, unit)
    fig, ax = _figure(8.0, max(2.5, 0.35 * len(units) + 1.2))
    names = [u["name"] for u in units]
    left = [0.0] * len(units)
    for key, color, label in (("compute_j", "#1b9e77", "compute"), ("memory_j", "#7570b3", "memory"),
                              ("static_j", "#d95f02", "static")):
        widths = [u[key] / factor for u in units]
        ax.barh(names, widths, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel(f"energy per inference ({unit}, estimated on {target})")
    ax.set_title(f"trial {point['trial']}: energy by unit")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def _contributions_plot(point: dict[str, Any]) -> bytes:
    c = point["contributions"]
    labels = ["fp32 baseline"] + [s["technique"] for s in c["steps"]]
    values = [c["baseline_j"]] + [s["energy_j_after"] for s in c["steps"]]
    factor, unit = _joule_scale(values)
    fig, ax = _figure(8.0, 4.2)
    bars = ax.bar(range(len(values)), [v / factor for v in values], color=["black"] + ["#1b9e77"] * len(c["steps"]))
    for bar, step in zip(bars[1:], c["steps"]):
        ax.annotate(f"÷{step['factor']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(range(len(values)), [f"+ {label}" if i else label for i, label in enumerate(labels)],
                  rotation=15, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(f"energy per inference ({unit}, estimated on {c['target']})")
    ax.set_title(f"trial {point['trial']}: the saving, technique by technique")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return _png(fig)


# --- html ---------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:.9rem}.note{color:#555;font-size:.85rem}.box{background:#f5f8f6;border-left:4px solid #1b9e77;padding:.6rem 1rem}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0}th,td{border-bottom:1px solid #e5e5e5;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#fafafa}td.l,th.l{text-align:left}tr.chosen{background:#fff6d8}img.plot{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:.5rem;font-size:.78rem;overflow-x:auto}details{margin:.3rem 0}
"""

# Counts script and resource errors from the start, and marks once loaded how many plots the browser
# decoded, so a headless browser can check the page (the only console line it should print is this one).
_HEAD_SCRIPT = "window.wattlessErrors = 0; window.addEventListener('error', function () { window.wattlessErrors += 1; }, true);"
_SCRIPT = """
window.addEventListener('load', function () {
  var plots = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var shown = plots.filter(function (p) { return p.complete && p.naturalWidth > 0; }).length;
  document.body.setAttribute('data-plots', String(plots.length));
  document.body.setAttribute('data-plots-shown', String(shown));
  document.body.setAttribute('data-errors', String(window.wattlessErrors));
  console.log('wattless report: ' + shown + ' of ' + plots.length + ' plots shown, ' + window.wattlessErrors + ' errors');
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None, left: int = 1,
           text_last: bool = True) -> str:
    """Numbers right-aligned; the first ``left`` columns and a last column of text left-aligned."""

    def aligned(j: int, n: int) -> bool:
        return j < left or (text_last and j == n - 1)

    th = "".join(f"<th class='l'>{h}</th>" if aligned(i, len(head)) else f"<th>{h}</th>" for i, h in enumerate(head))
    body = []
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        tds = "".join(f"<td class='l'>{c}</td>" if aligned(j, len(row)) else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(data: bytes, alt: str) -> str:
    return f"<img class='plot' alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _summary_html(results: dict[str, Any]) -> str:
    s, name = results.get("summary") or {}, results["metric_name"]
    if s.get("chosen_trial") is None:
        return ("<div class='box'>No frontier point within one metric point of the fp32 baseline yet"
                f" ({_e(results['trial_counts'].get('complete', 0))} trials complete). Run the same search again to continue it.</div>")
    s = ptq_summary(results)
    joules = s.get("best_ptq_energy_j") if s.get("best_ptq") else s.get("most_accurate_ptq_energy_j")
    ptq = f"; {_e(describe_ptq(s, name))}" + (f", {format_joules(joules)}" if joules else "")
    return (f"<div class='box'>Best point within {100 * s['within']:.0f} point of fp32: <b>trial {s['chosen_trial']}</b>, "
            f"{name} {_metric(s['metric'], name)} (fp32 {_metric(s['fp32_metric'], name)}), "
            f"{format_joules(s['energy_j'])} per inference: <b>{s['ratio_vs_fp32']:.1f}x</b> lower than fp32 "
            f"({format_joules(s['fp32_energy_j'])}){ptq}. Estimated on {_e(results['target'])}.</div>")


def _targets(results: dict[str, Any]) -> list[str]:
    t = results["target"]
    seen = [k for b in results.get("baselines", {}).values() for k in b.get("energy_j", {})]
    seen += [k for p in results.get("frontier", []) for k in p.get("energy_j", {})]
    return [t] + sorted({k for k in seen if k != t})


def _baselines_html(results: dict[str, Any]) -> str:
    t, name, targets = results["target"], results["metric_name"], _targets(results)
    fp32 = (results.get("baselines", {}).get("fp32") or {}).get("energy_j", {}).get(t)
    rows = []
    for bname, b in results.get("baselines", {}).items():
        if b.get("metric") is None:
            rows.append([_e(bname), "-", *["-"] * len(targets), "-", "-", "-", _e(f"not run here: {b.get('error')}")])
            continue
        e = b["energy_j"][t]
        rows.append([_e(bname), _metric(b["metric"], name), *[format_joules(b["energy_j"].get(k)) for k in targets],
                     f"{fp32 / e:.1f}x" if fp32 else "-", format_bytes(b.get("size_bytes")), format_seconds(b.get("latency_s", {}).get(t)),
                     _e(b.get("note", ""))])
    head = ["baseline", name, *[f"energy on {_e(k)}" for k in targets], "fp32 / this", "size", f"latency on {_e(t)}", "how it is priced"]
    return _table(head, rows)


def _frontier_html(results: dict[str, Any]) -> str:
    import tomli_w

    t, name, targets = results["target"], results["metric_name"], _targets(results)
    chosen = _chosen(results)
    rows, classes = [], []
    for p in results.get("frontier", []):
        recipe = tomli_w.dumps(p["recipe"])
        seed = f" (seed {p['seed']})" if p.get("seed") else ""
        rows.append([f"#{p['trial']}{_e(seed)}", _metric(p["metric"], name), *[format_joules(p["energy_j"].get(k)) for k in targets],
                     format_bytes(p.get("size_bytes")), format_seconds(p.get("latency_s", {}).get(t)),
                     f"<details><summary>{_e(recipe_summary(p['recipe']))}</summary><pre>{_e(recipe)}</pre></details>"])
        classes.append("chosen" if chosen is not None and p["trial"] == chosen["trial"] else "")
    if not rows:
        return "<p class='note'>No completed trial yet.</p>"
    head = ["trial", name, *[f"energy on {_e(k)}" for k in targets], "size", f"latency on {_e(t)}", "recipe"]
    return _table(head, rows, classes)


def _unit_match(name: str, base: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline unit a (possibly renamed: blocks.conv2, a parametrized layer) unit stands for."""
    for key, unit in base.items():
        if name == key or name.endswith(f".{key}"):
            return unit
    return None


def _breakdown_html(point: dict[str, Any], results: dict[str, Any]) -> str:
    base = {u["name"]: u for u in (results.get("baselines", {}).get("fp32") or {}).get("breakdown", [])}
    total = sum(u["energy_j"] for u in point.get("breakdown", [])) or 1.0
    rows = []
    for u in point.get("breakdown", []):
        b = _unit_match(u["name"], base)
        rows.append([_e(u["name"]), _e(u["type"]), f"{u['macs']:.3g}", f"{u['effective_macs']:.3g}", format_joules(u["energy_j"]),
                     f"{100 * u['energy_j'] / total:.1f}%", format_joules(u["compute_j"]), format_joules(u["memory_j"]),
                     format_joules(u["static_j"]), format_seconds(u["latency_s"]), format_joules(b["energy_j"]) if b else "-",
                     f"{b['energy_j'] / u['energy_j']:.1f}x" if b and u["energy_j"] else "-"])
    head = ["unit", "type", "MACs", "MACs run", "energy", "share", "compute", "memory", "static", "latency",
            "fp32 unit", "fp32 / this"]
    return _table(head, rows, left=2, text_last=False)


def _did(technique: str, techniques: dict[str, Any]) -> str:
    """What a technique did to the chosen model, in its own report's numbers."""
    if technique == "pruning" and "prune" in techniques:
        p = techniques["prune"]
        units = ", ".join(f"{k} {v['kept']}/{v['total']}" for k, v in (p.get("units") or {}).items())
        return f"{p['pattern']} {100 * p['sparsity']:.0f}% of weights removed" + (f"; kept {units}" if units else "")
    if technique == "activation sparsity" and "act_sparsity" in techniques:
        return f"mean activation density {100 * techniques['act_sparsity']['mean_activation_density']:.1f}%"
    if technique == "quantization" and "quantize" in techniques:
        q = techniques["quantize"]
        layers = ", ".join(f"{k} w{v['weight_bits']}a{v['act_bits']}" for k, v in q["layers"].items())
        return f"mean {q['mean_weight_bits']:.1f} weight bits; {layers}"
    if technique == "early exits and routing":
        parts = []
        if "early_exit" in techniques:
            e = techniques["early_exit"]
            fractions = ", ".join(f"{100 * f:.0f}%" for f in e.get("exit_fraction", []))
            parts.append(f"exits after {', '.join(e['after'])}; inputs leaving at each exit, then the final head: {fractions}")
        if "moe" in techniques:
            parts.append(f"{techniques['moe']['experts']} experts, top-{techniques['moe']['top_k']}")
        return "; ".join(parts) or "no dynamic path"
    return "not in this recipe"


def _contributions_html(point: dict[str, Any]) -> str:
    c = point["contributions"]
    rows = [["fp32 baseline", "", format_joules(c["baseline_j"]), ""]]
    for s in c["steps"]:
        rows.append([_e(s["technique"]), f"÷{s['factor']:.2f}", format_joules(s["energy_j_after"]),
                     _e(_did(s["technique"], point.get("techniques", {})))])
    return _table(["step", "factor", "energy after", "what it did"], rows) + (
        f"<p class='note'>Each step re-prices the trained model of trial {point['trial']} on {c['inputs']} test inputs "
        "with one more technique's effect switched on: <i>pruning</i> compares the fp32 baseline and this model both "
        "priced at fp32 with every activation computed (structure alone); <i>quantization</i> prices its own bit widths "
        "instead of fp32; <i>activation sparsity</i> is the zero-skipping this model gets beyond what the baseline's "
        "ReLUs already give; <i>early exits and routing</i> counts each input's actual path instead of every unit. The "
        "factors multiply to the whole saving. Distillation and the energy weight act through training, so they show in "
        "steps rather than as steps of their own.</p>")


def _trials_html(results: dict[str, Any]) -> str:
    name, rows = results["metric_name"], []
    for r in results.get("trials", []):
        note = r.get("error") or (r.get("pruned") or {}).get("reason") or r.get("interrupted") or ""
        if r.get("resumes") is not None:
            note = f"resumes trial {r['resumes']}" + (f"; {note}" if note else "")
        if r.get("feasible") is False:
            note = "outside the constraints" + (f"; {note}" if note else "")
        rows.append([str(r["trial"]), _e(r["state"]), _metric(r.get("metric"), name), format_joules(r.get("energy_j")),
                     str(r.get("epochs_done", 0)), _e(r.get("seed") or ""), _e(note)])
    return _table(["trial", "state", name, f"energy on {_e(results['target'])}", "epochs", "seed", "note"], rows, left=2)


def _page(results: dict[str, Any], plots: dict[str, bytes]) -> str:
    t, counts, chosen = results["target"], results.get("trial_counts", {}), _chosen(results)
    constraints = {k: v for k, v in (results.get("constraints") or {}).items() if v is not None}
    parts = [
        f"<h1>{_e(results['workload'])} on {_e(t)}: {_e(results['metric_name'])} against energy per inference</h1>",
        f"<p class='sub'>study {_e(results['study_name'])} in {_e(results['storage'])}; trials: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + (f"; constraints {_e(constraints)}" if constraints else "")
        + f"; written {_e(results.get('written', ''))}</p>",
        "<p class='note'>Every energy and latency figure is <b>estimated</b>: counted work priced on the target's "
        "coefficients (wattless targets), not measured. Metrics are on the workload's test split.</p>",
        _summary_html(results),
        "<h2>Frontier</h2>", _img(plots["frontier.png"], "frontier plot"),
        "<h2>Baselines</h2>", _baselines_html(results),
        "<h2>Frontier points</h2>", _frontier_html(results),
    ]
    if chosen is not None:
        parts += [f"<h2>Where the energy of trial {chosen['trial']} goes</h2>", _img(plots["breakdown.png"], "energy by unit"),
                  _breakdown_html(chosen, results)]
        if chosen.get("contributions"):
            parts += ["<h2>How each technique contributed</h2>", _img(plots["contributions.png"], "contributions"),
                      _contributions_html(chosen)]
    parts += ["<h2>All trials</h2><details><summary>every trial of the study</summary>", _trials_html(results), "</details>",
              "<h2>Search space</h2><details><summary>the dimensions the search drew from</summary>",
              f"<pre>{_e(json.dumps(results.get('space'), indent=1))}</pre></details>",
              f"<p class='note'>Rebuild this page from results.json: <code>wattless report {_e(results.get('out', 'DIR'))}</code></p>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>wattless report: "
            f"{_e(results['workload'])} on {_e(t)}</title><style>{_CSS}</style><script>{_HEAD_SCRIPT}</script></head><body>{''.join(parts)}"
            f"<script>{_SCRIPT}</script></body></html>")


def build_report(out: str | Path) -> Path:
    """Write OUT/report.html and the PNG copies of its plots from OUT/results.json; returns the page's path."""
    out = Path(out)
    path = out / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise SearchError(f"{path} does not exist: run `wattless search --out {out}` (or `wattless demo`) first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SearchError(f"{path} cannot be read: {exc}") from None
    try:
        plots, html = _render(_checked(results, path), out)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
        raise SearchError(f"{path} is incomplete or damaged ({type(exc).__name__}: {exc}); nothing was written. "
                          f"Run `wattless search --out {out} ...` again to rewrite it") from None
    for name, data in plots.items():  # written only once everything rendered: a failure changes no file
        _atomic(out / name, data)
    page = out / REPORT_FILE
    _atomic(page, html)
    return page


def _checked(results: Any, path: Path) -> dict[str, Any]:
    """The parts of results.json every report needs, by name."""
    wanted = {"target": str, "metric_name": str}
    if not isinstance(results, dict):
        raise SearchError(f"{path} is not a wattless results object (a JSON object)")
    missing = [k for k, kind in wanted.items() if not isinstance(results.get(k), kind)]
    bad = [k for k, kind in (("frontier", list), ("trials", list), ("baselines", dict))
           if k in results and not isinstance(results[k], kind)]
    if missing or bad:
        raise SearchError(f"{path} is incomplete or damaged: " + "; ".join(
            [f"`{k}` is missing" for k in missing] + [f"`{k}` has the wrong type" for k in bad])
            + f". Run `wattless search --out {path.parent} ...` again to rewrite it")
    return results


def _render(results: dict[str, Any], out: Path) -> tuple[dict[str, bytes], bytes]:
    results.setdefault("out", str(out))
    plots = {"frontier.png": _frontier_plot(results)}
    chosen = _chosen(results)
    if chosen is not None:
        plots["breakdown.png"] = _breakdown_plot(chosen, results["target"])
        if chosen.get("contributions"):
            plots["contributions.png"] = _contributions_plot(chosen)
    return plots, _page(results, plots).encode()


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
