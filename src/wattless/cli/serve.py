"""`wattless serve`, `wattless cascade calibrate`, `wattless cascade eval`: over wattless.serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.cli.console import console, print_json
from wattless.units import format_joules

__all__ = ["register", "serve", "calibrate", "evaluate", "cascade_table"]

cascade_app = typer.Typer(help="Calibrate and evaluate a cascade of exported tiers.", no_args_is_help=True)


def serve(
    cascade: Annotated[Path, typer.Argument(help="a calibrated cascade file (wattless cascade calibrate)")],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="server processes (each loads the cascade)")] = 1,
    batching: Annotated[Optional[bool], typer.Option("--batching/--no-batching", help="dynamic batching (default: "
                                                    "the file's [serve] table, else on)")] = None,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="inputs per batch at most (default 64)")] = None,
    max_wait_ms: Annotated[Optional[float], typer.Option("--max-wait-ms", help="how long a batch waits for more "
                                                         "requests (default 2 ms)")] = None,
    max_pending: Annotated[Optional[int], typer.Option("--max-pending", help="inputs waiting or running before "
                                                       "503 (default 1024)")] = None,
    max_inputs: Annotated[Optional[int], typer.Option("--max-inputs-per-request", help="inputs in one request "
                                                      "at most (default 256; more: 413)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level")] = "warning",
) -> None:
    """Serve a calibrated cascade over HTTP: /v1/predict, /v1/embeddings, /health, /metrics."""
    from wattless.serve.server import serve as run_serve, settings_for

    def ready(loaded, settings) -> None:
        batching_text = (f"dynamic batching on (up to {settings.max_batch} inputs, {settings.max_wait_ms:g} ms)"
                         if settings.batching else "dynamic batching off")
        tiers = ", ".join(f"{t.spec.name} on {t.spec.target}" for t in loaded.tiers)
        console.print(Text(f"serving {loaded.name} ({tiers}) at http://{host}:{port} with {workers} worker(s), "
                           f"{batching_text}; at most {settings.max_pending} inputs pending"), highlight=False)

    from wattless.serve.config import load_cascade_spec

    base = load_cascade_spec(cascade).serve
    settings = settings_for(base, batching=batching, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_pending=max_pending, max_inputs_per_request=max_inputs)
    run_serve(cascade, host=host, port=port, workers=workers, settings=settings, log_level=log_level, on_ready=ready)


def calibrate(
    cascade: Annotated[Path, typer.Argument(help="the cascade file (TOML)")],
    workload: Annotated[Optional[str], typer.Option("--workload", "-w", help="the workload whose validation split "
                                                    "calibrates (default: the file's `workload`)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the calibration as one JSON object")] = False,
) -> None:
    """Calibrate the tiers' thresholds and price their paths on held-out data; write CASCADE.calibration.json."""
    from wattless.serve import calibrate as run_calibrate

    log = None if as_json else (lambda msg: console.print(Text(msg, style="dim"), highlight=False))
    record = run_calibrate(cascade, workload, log=log)
    if as_json:
        print_json(record)
        return
    thresholds = "; ".join(_threshold_text(t) for t in record["tiers"])
    console.print(Text(f"thresholds: {thresholds}"), highlight=False)
    console.print(cascade_table(record["predicted"], f"{record['cascade']}: predicted on {record['inputs']} held-out "
                                                     f"inputs ({record['workload']} val)"))


def evaluate(
    cascade: Annotated[Path, typer.Argument(help="a calibrated cascade file")],
    workload: Annotated[Optional[str], typer.Option("--workload", "-w", help="the workload whose test split is "
                                                    "served (default: the file's `workload`)")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="write the result JSON to this file")] = None,
) -> None:
    """The cascade against each tier alone on the test split: accuracy and estimated joules per request."""
    from wattless.errors import CascadeError
    from wattless.files import atomic_write, check_output_file
    from wattless.serve import evaluate as run_evaluate

    if json_file is not None:
        check_output_file(json_file, "--json", CascadeError)
    result = run_evaluate(cascade, workload)
    console.print(cascade_table(result, f"{result['name']} on {result['inputs']} {result['workload']} test inputs"))
    console.print(Text(f"cascade against {result['reference']} alone: accuracy {-result['accuracy_drop_points']:+.2f} points, "
                       f"{result['energy_ratio']:.1f}x fewer estimated joules per request"), highlight=False)
    if json_file is not None:
        import json

        atomic_write(json_file, json.dumps(result, indent=2))
        console.print(Text(f"written to {json_file}"), highlight=False)


def _threshold_text(tier: dict) -> str:
    if tier["threshold"] is not None:
        return f"{tier['name']} answers when its confidence is >= {tier['threshold']:.4f}"
    return f"{tier['name']} {'never answers' if tier['never_answers'] else 'answers the rest'}"


def cascade_table(result: dict, title: str) -> Table:
    """Each tier alone, then the cascade: accuracy, estimated joules per request (on each tier's target)."""
    table = Table(title=escape(title) + " (joules estimated, each tier on its target)")
    for col in ("served by", "target", "accuracy", "energy per request", "escalation rate"):
        table.add_column(col, justify="right")
    for t in result["tiers"]:
        table.add_row(Text(f"{t['name']} alone"), Text(t["target"]), f"{100 * t['accuracy']:.2f} %",
                      format_joules(t["energy_j_per_request"]), "")
    c = result["cascade"]
    table.add_row("cascade", Text(" + ".join(t["target"] for t in result["tiers"])), f"{100 * c['accuracy']:.2f} %",
                  format_joules(c["energy_j_per_request"]), f"{100 * c['escalation_rate']:.1f} %")
    return table


def register(app: typer.Typer) -> None:
    """Add `serve` and the `cascade` group (calibrate, eval) to the wattless command line."""
    app.command(name="serve")(serve)
    cascade_app.command(name="calibrate")(calibrate)
    cascade_app.command(name="eval")(evaluate)
    app.add_typer(cascade_app, name="cascade")
