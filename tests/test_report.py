"""The report: self-contained HTML and PNG plots from results.json alone, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from wattless import cli
from wattless.cli.search import register
from wattless.energy import builtin_targets
from wattless.report import PLOTS, build_report, recipe_summary

TARGET = "mobile-npu"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def energies(scale: float) -> dict[str, float]:
    return {name: scale * (1 + i) for i, name in enumerate(sorted(builtin_targets()))} | {TARGET: scale}


def unit(name: str, energy: float) -> dict:
    return {"name": name, "type": "QuantConv1d", "energy_j": energy, "compute_j": 0.6 * energy, "memory_j": 0.4 * energy,
            "static_j": 0.0, "latency_s": 1e-7, "macs": 2e5, "effective_macs": 3e3}


RECIPE = {"name": "search-1", "target": TARGET, "train": {"epochs": 60}, "objective": {"energy_weight": 0.2},
          "distill": {"teacher": "baseline"}, "prune": [{"pattern": "structured", "sparsity": 0.72}],
          "quantize": {"weight_bits": 4, "act_bits": 4, "overrides": {"fc": {"weight_bits": 2, "act_bits": 8}}},
          "early_exit": {"after": ["relu2"], "target_accuracy_drop": 0.01}, "act_sparsity": {"l1": 3e-5}}


def point(trial: int, metric: float, energy: float) -> dict:
    steps, e = [], 1e-7
    for name, factor in (("pruning", 8.0), ("quantization", 3.0), ("activation sparsity", 1.5),
                         ("early exits and routing", 1.2)):
        e /= factor
        steps.append({"technique": name, "factor": factor, "energy_j_after": e})
    return {"trial": trial, "metric": metric, "metrics": {"accuracy": metric}, "val_metric": metric, "energy_j": energies(energy),
            "latency_s": energies(1e-6), "size_bytes": 2600.0, "macs": 3e4, "recipe": RECIPE, "params": {"prune": "structured"},
            "techniques": {"prune": {"pattern": "structured", "sparsity": 0.8, "units": {"conv1": {"kept": 9, "total": 32}}},
                           "quantize": {"mean_weight_bits": 4.0, "layers": {"conv1": {"weight_bits": 4, "act_bits": 4}}},
                           "act_sparsity": {"mean_activation_density": 0.12},
                           "early_exit": {"after": ["relu2"], "exit_fraction": [0.6, 0.4]}},
            "breakdown": [unit("blocks.conv2", energy * 0.5), unit("blocks.conv3", energy * 0.3), unit("blocks.fc", energy * 0.2)],
            "contributions": {"target": TARGET, "baseline_j": 1e-7, "final_j": e, "steps": steps, "inputs": 16},
            "seed": "mnist1d-npu" if trial == 0 else None, "run_dir": f"DIR/trials/{trial}", "duration_s": 60.0, "epochs": 60}


def make_results(*, with_frontier: bool = True) -> dict:
    frontier = [point(3, 0.90, 1e-9), point(0, 0.945, 1.8e-9), point(5, 0.952, 4e-9)] if with_frontier else []
    baselines = {"fp32": {"metric": 0.953, "energy_j": energies(9.7e-8), "latency_s": energies(5e-6), "size_bytes": 93000.0,
                          "note": "the dense fp32 baseline", "breakdown": [unit("conv2", 4.6e-8), unit("conv3", 2.9e-8), unit("fc", 1.1e-8)]},
                 "torch-dynamic-int8": {"metric": 0.953, "energy_j": energies(9e-8), "latency_s": energies(5e-6),
                                        "size_bytes": 54000.0, "note": "int8 weights"},
                 "ort-dynamic-int8": {"metric": None, "energy_j": {}, "error": "ModuleNotFoundError: onnxruntime",
                                      "note": "int8 weights"},
                 "ort-static-int8": {"metric": 0.954, "energy_j": energies(3.2e-8), "latency_s": energies(2e-6),
                                     "size_bytes": 23000.0, "note": "int8 weights and activations"}}
    trials = [{"trial": p["trial"], "state": "complete", "metric": p["metric"], "energy_j": p["energy_j"][TARGET],
               "feasible": True, "seed": p["seed"], "epochs_done": 60} for p in frontier]
    trials += [{"trial": 7, "state": "complete", "metric": 0.93, "energy_j": 5e-9, "feasible": True, "epochs_done": 60},
               {"trial": 8, "state": "pruned", "metric": None, "energy_j": None, "pruned": {"reason": "dominated"}, "epochs_done": 42},
               {"trial": 9, "state": "running", "metric": None, "energy_j": None, "epochs_done": 12}]
    summary = {"target": TARGET, "within": 0.01, "chosen_trial": 0 if with_frontier else None, "best_ptq": "ort-static-int8",
               "best_ptq_energy_j": 3.2e-8, "best_ptq_metric": 0.954, "fp32_metric": 0.953, "fp32_energy_j": 9.7e-8}
    if with_frontier:
        summary.update(metric=0.945, energy_j=1.8e-9, metric_drop_points=0.8, ratio_vs_fp32=53.9, ratio_vs_best_ptq=17.8)
    return {"schema": 1, "workload": "mnist1d", "target": TARGET, "metric_name": "accuracy", "energy_kind": "estimated",
            "study_name": "wattless-mnist1d-mobile-npu", "storage": "sqlite:///DIR/study.db", "constraints": {},
            "space": {"epochs": 60}, "trial_counts": {"complete": 4, "pruned": 1, "running": 1}, "baselines": baselines,
            "frontier": frontier, "summary": summary, "trials": trials, "written": "2026-01-01 00:00:00"}


def write(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_report_is_self_contained_with_png_copies(tmp_path):
    page = build_report(write(tmp_path / "s", make_results()))
    text = page.read_text()
    assert page == tmp_path / "s" / "report.html"
    for name in PLOTS:
        assert (tmp_path / "s" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)""", text)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text  # nothing from the network
    for needle in ("53.9x", "17.8x", "ort-static-int8", "trial 0", "estimated", "not run here", "pruning", "blocks.conv2"):
        assert needle in text, needle


def test_an_old_results_file_gets_the_honest_ptq_comparison(tmp_path):
    """A results.json written before the tolerance rule named the cheapest PTQ baseline whatever its metric."""
    results = make_results()
    results["baselines"]["ort-static-int8"]["metric"] = 0.91  # 4.3 points below fp32, still named best before
    text = build_report(write(tmp_path / "s", results)).read_text()
    assert "the best post-training quantization within 1 point of fp32 (torch-dynamic-int8, 95.3%)" in text
    assert "50.0x lower than the best" in text and "17.8x" not in text


def test_no_ptq_within_the_tolerance_is_said_in_the_report(tmp_path):
    results = make_results()
    results["baselines"]["torch-dynamic-int8"]["metric"] = 0.93
    results["baselines"]["ort-static-int8"]["metric"] = 0.91
    text = build_report(write(tmp_path / "s", results)).read_text()
    assert "no post-training quantization baseline is within 1 point of fp32 (the most accurate: " \
           "torch-dynamic-int8, 93.0%); 50.0x lower than it" in text


def test_partial_report_before_any_trial_completes(tmp_path):
    page = build_report(write(tmp_path / "s", make_results(with_frontier=False)))
    assert "No frontier point" in page.read_text() and (tmp_path / "s" / "frontier.png").exists()


def test_recipe_summary_names_every_technique():
    line = recipe_summary(RECIPE)
    for part in ("prune structured 0.72", "QAT w4a4", "fc: w2a8", "exit after relu2", "act L1 3.0e-05", "distilled", "λ 0.2"):
        assert part in line


def test_recipe_summary_gives_an_overrides_left_out_bits_from_the_config():
    line = recipe_summary({"quantize": {"weight_bits": 4, "act_bits": 4, "act_granularity": "token", "smooth": 0.5,
                                        "overrides": {"conv1": {"act_bits": 8}, "fc": {"weight_bits": 3}}}})
    assert "QAT w4a4 (conv1: w4a8, fc: w3a4; per-token activations; SmoothQuant 0.5)" in line


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["wattless", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    return (0 if info.value.code is None else info.value.code), out, err


def test_report_command_rebuilds_from_the_folder_alone(tmp_path, monkeypatch, capsys):
    folder = write(tmp_path / "s", make_results())  # no study, no trial runs: nothing to re-run from
    code, out, _ = run_cli(monkeypatch, capsys, "report", str(folder))
    assert code == 0 and "report.html" in out and (folder / "report.html").exists()
    code, _, err = run_cli(monkeypatch, capsys, "report", str(tmp_path / "empty"))
    assert code == 2 and "results.json does not exist" in err


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("with_frontier", [True, False])
def test_report_renders_in_headless_chromium(tmp_path, with_frontier):
    page = build_report(write(tmp_path / "s", make_results(with_frontier=with_frontier)))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout).group(1)
    plots = 3 if with_frontier else 1
    assert f'data-plots="{plots}"' in body and f'data-plots-shown="{plots}"' in body  # every plot decoded and shown
    assert 'data-errors="0"' in body  # no script error, no resource failing to load
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1 and f"{plots} of {plots} plots shown, 0 errors" in console[0], console
