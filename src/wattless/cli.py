"""The command line: one verb per job. Each verb parses, calls the Python API, prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless._files import json_safe
from wattless.errors import CalibrationError, WattlessError

try:  # typer runs its own copy of click; its exceptions are what the command line raises
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer: plain click
    from click.exceptions import ClickException, NoArgsIsHelpError

app = typer.Typer(
    name="wattless",
    help="Make neural networks structurally stingy and prove it in joules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One line on stderr; the message is text (it quotes paths, specs and names the user wrote)."""
    line = " ".join(str(message).split())
    err_console.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    print_error(message)
    raise typer.Exit(code=2)


def _json_line(obj) -> str:
    """One line of strict JSON: a non-finite float (a model with NaN weights) is written as null, not NaN."""
    return json.dumps(json_safe(obj), allow_nan=False) + "\n"


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _joules(value: float) -> str:
    for factor, prefix in ((1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}J"
    return f"{value / 1e-12:.3g} pJ"


def _seconds(value: float) -> str:
    for factor, prefix in ((1, ""), (1e-3, "m"), (1e-6, "µ")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}s"
    return f"{value / 1e-9:.3g} ns"


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
    table.add_column("MACs", justify="right", footer=_si(total_macs, ""))
    table.add_column("effective", justify="right", footer=_si(sum(u.effective_macs for u in est.units), ""))
    table.add_column("w/a precision")
    table.add_column("weights", justify="right", footer=_si(sum(r["weight_bytes"] for r in records.values()), "B"))
    table.add_column("energy", justify="right", footer=_joules(est.energy_j))
    table.add_column("share", justify="right", footer="100%")
    table.add_column("latency", justify="right", footer=_seconds(est.latency_s))
    for unit in est.units[:top]:
        rec = records[unit.name]
        table.add_row(
            Text(unit.name), Text(unit.type), _si(unit.macs, ""), _si(unit.effective_macs, ""),
            f"{rec['weight_precision']}/{rec['act_precision']}", _si(rec["weight_bytes"], "B"),
            _joules(unit.energy_j), f"{100 * unit.energy_j / est.energy_j:.1f}%" if est.energy_j else "-",
            _seconds(unit.latency_s),
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
        table.add_row(t, _joules(pre["energy_j"][t]), _seconds(pre["latency_s"][t]), _joules(dec["energy_j"][t]),
                      _seconds(dec["latency_s"][t]), f"{tps:.3g}" if tps else "-", _joules(req["energy_j"][t]))
    return table


@app.command()
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
    from wattless.energy import profile as run_profile, resolve_target, set_precision
    from wattless.spec import example_from_shape, load_model, parse_shape

    if top < 1:
        _fail(f"--top takes a positive number of units per table, got {top}")
    targets = [resolve_target(t) for t in target] if target else None
    shape = parse_shape(input_shape) if input_shape else None
    model, inputs = load_model(spec)
    if shape is not None:
        inputs = example_from_shape(shape)
    if inputs is None:
        _fail(f"{spec!r} gives no example inputs: pass --input-shape, e.g. --input-shape 1,3,224,224")
    if weight_precision or act_precision:
        try:
            set_precision(model, weight_precision, act_precision)
        except ValueError as exc:
            _fail(str(exc))
    if decode:
        from wattless.energy.decode import profile_decode

        if measure:
            _fail("--measure is not available with --decode (decode profiles are estimated only)")
        result = profile_decode(model, inputs, targets, prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch)
        if as_json:
            sys.stdout.write(json.dumps({"model": spec, **result.to_json()}) + "\n")
        else:
            console.print(_decode_table(result.to_json()))
        return
    result = run_profile(model, inputs, targets, measure_energy=measure)
    if as_json:
        out = {"model": spec, **result.to_json()}
        sys.stdout.write(_json_line(out))
        return
    for name in result.estimates:
        console.print(_profile_table(result, name, top))
    if result.measurement:
        m = result.measurement
        console.print(
            f"[bold]measured[/] on {escape(', '.join(m.devices))}: {_joules(m.energy_j)} per inference "
            f"(median of {len(m.per_window_energy_j)} windows of {m.window_s:.2f} s, spread {100 * m.spread:.1f}%)"
        )
    elif measure:
        console.print(f"[yellow]not measured:[/] {escape(str(result.measurement_note))}")


@app.command()
def targets(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    sources: Annotated[bool, typer.Option("--sources/--no-sources", help="list each target's sources")] = True,
) -> None:
    """List the built-in hardware targets with their sources."""
    from wattless.energy import builtin_targets

    found = builtin_targets()
    if as_json:
        sys.stdout.write(json.dumps({n: t.to_toml_dict() for n, t in found.items()}) + "\n")
        return
    for name, t in found.items():
        console.print(f"[bold]{escape(name)}[/] ({t.kind}): {escape(t.description)}", highlight=False)
        if sources:
            for s in t.sources:
                console.print(f"   [dim]{escape(s.key)}:[/] {escape(s.cite)}  [dim]covers {escape(', '.join(s.covers))}[/]",
                              highlight=False)


@app.command()
def models() -> None:
    """List the built-in models that `wattless profile` accepts by name."""
    from wattless.models import BUILTIN_MODELS

    for name, (_, text) in BUILTIN_MODELS.items():
        console.print(f"[bold]{name}[/]: {text}", highlight=False)


@app.command()
def calibrate(
    measurements: Annotated[Path, typer.Argument(help="JSON list of {spec, input_shape?, measured_j, weight_precision?, act_precision?}")],
    target: Annotated[str, typer.Option("--target", "-t", help="base target (name or file)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the fitted target file")],
    fit: Annotated[Optional[list[str]], typer.Option("--fit", help="coefficient to fit, e.g. mac_pj.fp32; repeat")] = None,
    name: Annotated[Optional[str], typer.Option(help="name of the fitted target")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fit a target's coefficients to measured joules per inference of several models."""
    from wattless.energy import CalibrationPoint, calibrate as run_calibrate, count, resolve_target, set_precision, write_target
    from wattless.spec import example_from_shape, load_model, parse_shape

    from wattless._files import check_output_file
    from wattless.energy.calibrate import check_measurement_rows

    base = resolve_target(target)
    check_output_file(out, "--out", CalibrationError)
    if out.exists() and out.resolve() == Path(target).resolve():
        _fail(f"--out {out} is the base target file; write the fitted target elsewhere")
    try:
        rows = json.loads(measurements.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"cannot read measurements {measurements}: {exc}")
    check_measurement_rows(rows, str(measurements))
    points = []
    for i, row in enumerate(rows):
        model, inputs = load_model(row["spec"])
        if row.get("input_shape"):
            inputs = example_from_shape(parse_shape(str(row["input_shape"])))
        if inputs is None:
            _fail(f"{row['spec']!r} gives no example inputs: add `input_shape` to its record")
        try:
            set_precision(model, row.get("weight_precision"), row.get("act_precision"))
        except ValueError as exc:
            _fail(f"{measurements}: record {i}: {exc}")
        points.append(CalibrationPoint(row.get("name", row["spec"]), count(model, inputs), float(row["measured_j"])))
    result = run_calibrate(points, base, fit=fit, name=name)
    write_target(result.target, out)
    if as_json:
        sys.stdout.write(_json_line({**result.summary(), "out": str(out)}))
        return
    table = Table(title=f"calibrated {base.name} -> {result.target.name}")
    for col in ("coefficient", "base", "fitted"):
        table.add_column(col)
    for k, v in result.fitted.items():
        table.add_row(k, f"{result.base[k]:.4g}", f"{v:.4g}")
    console.print(table)
    console.print(Text(f"fit error: RMS {100 * result.rms_rel_error:.1f}% (base target: "
                       f"{100 * result.base_rms_rel_error:.1f}%), worst {100 * result.max_abs_rel_error:.1f}%; written to {out}"))


@app.command()
def optimize(
    workload: Annotated[str, typer.Option("--workload", "-w", help="mnist1d, digits, minilm, or path/to/file.py:factory")],
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="recipe TOML file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (resumed if it holds this run)")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="override the recipe's target")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json on stdout")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    """Train the baseline if none is cached, apply a recipe under the energy objective, write the run."""
    from wattless.optimize import optimize as run_optimize

    metrics = run_optimize(workload, recipe, out, target=target, progress=not no_progress and not as_json)
    if as_json:
        sys.stdout.write(_json_line(metrics))
        return
    if metrics.get("already_done"):
        console.print(Text(f"{out} holds this run, finished: left as it is (remove it to train again)"))
    t = metrics["target"]
    table = Table(title=f"{escape(metrics['workload'])} with {escape(metrics['recipe'])}: energy per inference, "
                        f"estimated on {escape(t)}")
    for col in ("model", metrics["metric_name"], f"energy on {t}", "vs fp32"):
        table.add_column(col, justify="right")
    base = metrics["baseline_energy_j"][t]
    table.add_row("dense fp32 baseline", f"{metrics['baseline_accuracy']:.4f}", _joules(base), "1x")
    p = metrics.get("ptq_int8") or {}
    if p.get("accuracy") is not None:
        within = "" if p.get("within_tolerance", True) else ", none within 1 point: the most accurate"
        table.add_row(f"post-training int8 ({p.get('name', 'best')}{within})", f"{p['accuracy']:.4f}",
                      _joules(p["energy_j"][t]), f"{base / p['energy_j'][t]:.1f}x lower")
    table.add_row("wattless (this run)", f"{metrics['accuracy']:.4f}", _joules(metrics["energy_j"][t]),
                  f"{metrics['energy_ratio'][t]:.1f}x lower")
    console.print(table)
    console.print(Text(f"written to {out} (model.safetensors, recipe.toml, metrics.json)"))


def _register_more() -> None:
    from wattless import commands_export, commands_search

    commands_search.register(app)  # search, report, demo
    commands_export.register(app)  # export, bench


_register_more()


def main() -> None:
    """Run the command line: a WattlessError is one line and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()  # the help, as `wattless` alone always printed it
        sys.exit(exc.exit_code)
    except ClickException as exc:  # a bad option or argument: one line too, with the way to the help
        ctx = getattr(exc, "ctx", None)
        where = f"wattless {ctx.info_name}" if ctx is not None and ctx.parent is not None else "wattless"
        print_error(f"{exc.format_message()} (see `{where} --help`)")
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error("interrupted")
        sys.exit(130)
    except WattlessError as exc:
        print_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except MemoryError:
        print_error("out of memory: the model, its inputs or a setting (--input-shape, a batch size) is too large "
                    "for this machine")
        sys.exit(2)
    except OSError as exc:  # the environment: a full disk, a permission, a path that went away
        print_error(f"{type(exc).__name__}: {exc}")
        sys.exit(2)
    except Exception as exc:  # a last resort: specific checks raise WattlessError before getting here
        print_error(f"unexpected {type(exc).__name__}: {exc} (a bug in wattless or in user code it ran; "
                    "please report it with the command)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
