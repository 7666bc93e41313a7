"""`wattless profile`, `targets`, `models`, `calibrate`: the energy model's verbs over wattless.energy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.cli.console import console, print_json
from wattless.cli.errors import fail
from wattless.errors import CalibrationError
from wattless.units import format_joules, format_seconds, format_si

__all__ = ["register", "profile", "targets", "models", "calibrate"]


def profile(
    spec: Annotated[str, typer.Argument(help="built-in model name, path/to/file.py:factory or package.module:factory")],
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", help="e.g. 1,3,224,224 (random input)")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="target name or .toml file; repeat")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    weight_precision: Annotated[Optional[str], typer.Option(help="assume every weight runs at this precision, e.g. int8")] = None,
    act_precision: Annotated[Optional[str], typer.Option(help="assume every activation runs at this precision")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="also measure joules with this machine's counter")] = False,
    top: Annotated[int, typer.Option(help="units shown per table")] = 20,
    decode: Annotated[bool, typer.Option("--decode", help="decoder LM: price a prefill and KV-cached decode steps, per token")] = False,
    prompt_tokens: Annotated[Optional[int], typer.Option(help="--decode: prompt length P (default: the example's)")] = None,
    new_tokens: Annotated[int, typer.Option(help="--decode: decode steps N")] = 128,
    batch: Annotated[int, typer.Option(help="--decode: sequences decoded together")] = 1,
) -> None:
    """Count a model's work and estimate joules per inference (or, with --decode, per token) on hardware targets."""
    from wattless.energy import profile as run_profile, resolve_target

    if top < 1:
        fail(f"--top takes a positive number of units per table, got {top}")
    targets = [resolve_target(t) for t in target] if target else None
    model, inputs = _model_and_inputs(spec, input_shape, weight_precision, act_precision)
    if decode:
        _profile_decode(spec, model, inputs, targets, measure, as_json,
                        dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch))
        return
    result = run_profile(model, inputs, targets, measure_energy=measure)
    if as_json:
        print_json({"model": spec, **result.to_json()})
        return
    for name in result.estimates:
        console.print(_profile_table(result, name, top))
    _print_measurement(result, measure)


def _model_and_inputs(spec: str, input_shape: str | None, weight_precision: str | None, act_precision: str | None):
    from wattless.energy import set_precision
    from wattless.spec import example_from_shape, load_model, parse_shape

    shape = parse_shape(input_shape) if input_shape else None
    model, inputs = load_model(spec)
    if shape is not None:
        inputs = example_from_shape(shape)
    if inputs is None:
        fail(f"{spec!r} gives no example inputs: pass --input-shape, e.g. --input-shape 1,3,224,224")
    if weight_precision or act_precision:
        try:
            set_precision(model, weight_precision, act_precision)
        except ValueError as exc:
            fail(str(exc))
    return model, inputs


def _profile_decode(spec: str, model, inputs, targets, measure: bool, as_json: bool, settings: dict) -> None:
    from wattless.energy.decode import profile_decode

    if measure:
        fail("--measure is not available with --decode (decode profiles are estimated only)")
    result = profile_decode(model, inputs, targets, **settings)
    if as_json:
        print_json({"model": spec, **result.to_json()}, strict=False)
    else:
        console.print(_decode_table(result.to_json()))


def _print_measurement(result, measure: bool) -> None:
    if result.measurement:
        m = result.measurement
        console.print(
            f"[bold]measured[/] on {escape(', '.join(m.devices))}: {format_joules(m.energy_j)} per inference "
            f"(median of {len(m.per_window_energy_j)} windows of {m.window_s:.2f} s, spread {100 * m.spread:.1f}%)"
        )
    elif measure:
        console.print(f"[yellow]not measured:[/] {escape(str(result.measurement_note))}")


def _profile_table(result, target_name: str, top: int) -> Table:
    est = result.estimates[target_name]
    records = {r["name"]: r for r in result.counts.mean_records()}
    table = Table(
        title=f"{escape(target_name)}: joules per inference, [bold]estimated[/] (not measured)",
        caption=f"{len(est.units)} units; {min(top, len(est.units))} biggest shown",
        show_footer=True,
    )
    total_macs = sum(r["macs"] for r in records.values())
    table.add_column("unit", footer="total")
    table.add_column("type")
    table.add_column("MACs", justify="right", footer=format_si(total_macs, ""))
    table.add_column("effective", justify="right", footer=format_si(sum(u.effective_macs for u in est.units), ""))
    table.add_column("w/a precision")
    table.add_column("weights", justify="right", footer=format_si(sum(r["weight_bytes"] for r in records.values()), "B"))
    table.add_column("energy", justify="right", footer=format_joules(est.energy_j))
    table.add_column("share", justify="right", footer="100%")
    table.add_column("latency", justify="right", footer=format_seconds(est.latency_s))
    for unit in est.units[:top]:
        rec = records[unit.name]
        table.add_row(
            Text(unit.name), Text(unit.type), format_si(unit.macs, ""), format_si(unit.effective_macs, ""),
            f"{rec['weight_precision']}/{rec['act_precision']}", format_si(rec["weight_bytes"], "B"),
            format_joules(unit.energy_j), f"{100 * unit.energy_j / est.energy_j:.1f}%" if est.energy_j else "-",
            format_seconds(unit.latency_s),
        )
    return table


def _decode_table(out: dict) -> Table:
    cfg, pre, dec, req = out["decode_config"], out["prefill"], out["decode"], out["per_request"]
    table = Table(title=f"P = {cfg['prompt_tokens']} prompt tokens, N = {cfg['new_tokens']} new, batch {cfg['batch']}: "
                        "[bold]estimated[/] (not measured)", caption="; ".join(out["notes"]) or None)
    for col in ("target", "prefill (per request)", "time to first token", "J per token", "s per token",
                "tokens/s (batch)", "J per request"):
        table.add_column(col, justify="right")
    for t in dec["energy_j"]:
        tps = dec["tokens_per_s"][t]
        table.add_row(Text(t), format_joules(pre["energy_j"][t]), format_seconds(pre["latency_s"][t]),
                      format_joules(dec["energy_j"][t]), format_seconds(dec["latency_s"][t]),
                      f"{tps:.3g}" if tps else "-", format_joules(req["energy_j"][t]))
    return table


def targets(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    sources: Annotated[bool, typer.Option("--sources/--no-sources", help="list each target's sources")] = True,
) -> None:
    """List the built-in hardware targets with their sources."""
    from wattless.energy import builtin_targets

    found = builtin_targets()
    if as_json:
        print_json({n: t.to_toml_dict() for n, t in found.items()}, strict=False)
        return
    for name, t in found.items():
        console.print(f"[bold]{escape(name)}[/] ({t.kind}): {escape(t.description)}", highlight=False)
        if sources:
            for s in t.sources:
                console.print(f"   [dim]{escape(s.key)}:[/] {escape(s.cite)}  [dim]covers {escape(', '.join(s.covers))}[/]",
                              highlight=False)


def models() -> None:
    """List the built-in models that `wattless profile` accepts by name."""
    from wattless.models import BUILTIN_MODELS

    for name, (_, text) in BUILTIN_MODELS.items():
        console.print(f"[bold]{escape(name)}[/]: {escape(text)}", highlight=False)


def calibrate(
    measurements: Annotated[Path, typer.Argument(help="JSON list of {spec, input_shape?, measured_j, weight_precision?, act_precision?}")],
    target: Annotated[str, typer.Option("--target", "-t", help="base target (name or file)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the fitted target file")],
    fit: Annotated[Optional[list[str]], typer.Option("--fit", help="coefficient to fit, e.g. mac_pj.fp32; repeat")] = None,
    name: Annotated[Optional[str], typer.Option(help="name of the fitted target")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fit a target's coefficients to measured joules per inference of several models."""
    from wattless.files import check_output_file
    from wattless.energy import calibrate as run_calibrate, resolve_target, write_target

    base = resolve_target(target)
    check_output_file(out, "--out", CalibrationError)
    if out.exists() and out.resolve() == Path(target).resolve():
        fail(f"--out {out} is the base target file; write the fitted target elsewhere")
    points = [_calibration_point(i, row, measurements) for i, row in enumerate(_measurement_rows(measurements))]
    result = run_calibrate(points, base, fit=fit, name=name)
    write_target(result.target, out)
    if as_json:
        print_json({**result.summary(), "out": str(out)})
        return
    console.print(_calibration_table(result, base))
    console.print(Text(f"fit error: RMS {100 * result.rms_rel_error:.1f}% (base target: "
                       f"{100 * result.base_rms_rel_error:.1f}%), worst {100 * result.max_abs_rel_error:.1f}%; written to {out}"))


def _measurement_rows(measurements: Path) -> list:
    from wattless.energy.calibrate import check_measurement_rows

    try:
        rows = json.loads(measurements.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"cannot read measurements {measurements}: {exc}")
    check_measurement_rows(rows, str(measurements))
    return rows


def _calibration_point(i: int, row: dict, measurements: Path):
    from wattless.energy import CalibrationPoint, count, set_precision
    from wattless.spec import example_from_shape, load_model, parse_shape

    model, inputs = load_model(row["spec"])
    if row.get("input_shape"):
        inputs = example_from_shape(parse_shape(str(row["input_shape"])))
    if inputs is None:
        fail(f"{row['spec']!r} gives no example inputs: add `input_shape` to its record")
    try:
        set_precision(model, row.get("weight_precision"), row.get("act_precision"))
    except ValueError as exc:
        fail(f"{measurements}: record {i}: {exc}")
    return CalibrationPoint(row.get("name", row["spec"]), count(model, inputs), float(row["measured_j"]))


def _calibration_table(result, base) -> Table:
    table = Table(title=Text(f"calibrated {base.name} -> {result.target.name}"))
    for col in ("coefficient", "base", "fitted"):
        table.add_column(col)
    for k, v in result.fitted.items():
        table.add_row(k, f"{result.base[k]:.4g}", f"{v:.4g}")
    return table


def register(app: typer.Typer) -> None:
    """Add `profile`, `targets`, `models` and `calibrate` to the wattless command line."""
    for verb in (profile, targets, models, calibrate):
        app.command()(verb)
