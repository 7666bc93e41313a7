"""The result as a rich table, and the guard's verdict in plain words."""

from __future__ import annotations

from typing import Any

__all__ = ["guard_lines", "print_table"]


def _features_text(features: dict[str, bool | str]) -> str:
    if all(v == "unknown" for v in features.values()):
        return "CPU features unknown"
    have = [f for f, v in features.items() if v is True]
    return "with " + ", ".join(have) if have else f"without {', '.join(features)}"


def guard_lines(result: dict[str, Any]) -> list[str]:
    """The plain-words verdict of the guard, one line per batch size."""
    lines = []
    for batch, g in result["guard"].items():
        verdict = "SLOWER than" if g["slower_than_ort_fp32"] else "faster than"
        lines.append(f"batch {batch}: the wattless export is {verdict} ONNX Runtime fp32 "
                     f"({g['speedup_vs_ort_fp32']:.2f}x its speed)")
    return lines


def print_table(result: dict[str, Any], console: Any = None, target: str | tuple[str, ...] = "mobile-npu") -> None:
    """The result as a table on the console, with the guard's verdict under it; one estimated-energy column
    per target in ``target`` (a name or a tuple of names)."""
    from rich import get_console
    from rich.markup import escape
    from rich.table import Table

    console = console or get_console()
    targets = (target,) if isinstance(target, str) else tuple(target)
    m = result["machine"]
    table = Table(title=f"{escape(result['workload'])}: runtimes side by side, {result['threads']} thread(s), "
                        f"{result['repeats']} timed calls" + (f", {result['seq_len']} tokens" if result["seq_len"] else ""),
                  caption=f"{m['cpu']} ({m['cores']} cores, {_features_text(m.get('cpu_features') or {})}), "
                          f"load average {m['load_average_start'][0]:.1f} -> {m['load_average_end'][0]:.1f}; "
                          f"energy estimated on {', '.join(targets)}")
    for col in ("runtime", "batch", "p50 ms", "p95 ms", "inputs/s", "vs ort-fp32", "peak RSS MB", "size MB",
                result["metric_name"], *(f"µJ/inference {t}" if len(targets) > 1 else "µJ/inference" for t in targets)):
        table.add_column(col, justify="right" if col != "runtime" else "left")
    for r in result["rows"]:
        energies = [r["energy_j"].get(t) for t in targets]
        table.add_row(r["runtime"], str(r["batch"]), f"{r['latency_ms_p50']:.3f}", f"{r['latency_ms_p95']:.3f}",
                      f"{r['throughput_per_s']:.0f}",
                      f"{r['speedup_vs_ort_fp32']:.2f}x" if r.get("speedup_vs_ort_fp32") else "-",
                      f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-",
                      f"{r['size_mb']:.2f}" if r["size_mb"] is not None else "-",
                      f"{r['metric']:.4f}" if r["metric"] is not None else "-",
                      *(f"{e * 1e6:.3g}" if e is not None else "-" for e in energies))
    console.print(table)
    for line in guard_lines(result):
        console.print(("[bold red]" if "SLOWER" in line else "[green]") + line, highlight=False)
    if result["measured_note"]:
        console.print(f"[yellow]not measured:[/] {escape(result['measured_note'])}", highlight=False)
