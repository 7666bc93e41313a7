"""Bad input and faults across every command: one line naming the problem, exit code 2, no traceback, and every
file the user had left unchanged. Also the runtime API's damaged files, a foreign checkpoint, a finished run
re-run, markup in user text, divergence, exact resume with pruning and the energy objective."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save_file

from wattless.cli import main
from wattless.energy.target import _builtin_dir
from wattless.errors import TrainingError
from wattless.optimize import optimize
from wattless.recipe import parse_recipe

TESTS = Path(__file__).parent
SPEC = f"{TESTS / 'tiny_workload.py'}:tiny"


def run_cli(*args: str) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["wattless", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "cache" not in p.relative_to(root).parts}


def assert_one_line_error(code: int, err: str, expect: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert expect in lines[0], err


# --- a finished tiny run and the files the cases damage ------------------------------------------------------

@dataclass
class World:
    root: Path
    run: Path  # a finished run, never touched by a case

    def copy_run(self, name: str) -> Path:
        dest = self.root / name
        if not dest.exists():
            shutil.copytree(self.run, dest)
        return dest

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return path


def _npu() -> dict:
    import tomllib

    return tomllib.loads((_builtin_dir() / "mobile-npu.toml").read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WATTLESS_CACHE", str(root / "cache"))
        recipe = {"name": "tiny-q", "train": {"epochs": 2, "lr": 1e-2}, "quantize": {"weight_bits": 8}}
        optimize(SPEC, parse_recipe(recipe), root / "run", progress=False, baselines=False)
        w = World(root, root / "run")
        w.write("recipe.toml", tomli_w.dumps(recipe))
        w.write("other-recipe.toml", tomli_w.dumps({**recipe, "name": "tiny-other"}))
        yield w


def _target_with(path: str, value) -> dict:
    data = _npu()
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return data


def _toml_target(w: World, name: str, path: str, value) -> str:
    text = tomli_w.dumps(_target_with(path, 0.5)).replace(f"{path.split('.')[-1]} = 0.5", f"{path.split('.')[-1]} = {value}", 1)
    return str(w.write(name, text))


def _recipe(w: World, name: str, text: str) -> str:
    return str(w.write(name, text))


def _measurements(w: World, name: str, rows: list) -> str:
    return str(w.write(name, json.dumps(rows)))


def _damaged_run(w: World, name: str, what: str) -> str:
    run = w.copy_run(name)
    model = run / "model.safetensors"
    data = (w.run / "model.safetensors").read_bytes()
    if what == "truncated":
        model.write_bytes(data[: len(data) // 2])
    elif what == "empty":
        model.write_bytes(b"")
    elif what == "pt":
        torch.save({"w": torch.zeros(3)}, model)
    elif what == "run.json":
        (run / "run.json").write_text("{not json")
    return str(run)


def _ckpt_run(w: World, name: str, what: str) -> str:
    """A run stopped before writing its results, its checkpoint swapped or damaged."""
    run = w.copy_run(name)
    for f in ("metrics.json", "model.safetensors"):
        (run / f).unlink(missing_ok=True)
    ckpt = run / "checkpoint"
    if what == "arch":
        save_file({"other.weight": torch.zeros(2, 2)}, str(ckpt / "model.safetensors"))
    elif what == "pt":
        torch.save({"w": torch.zeros(3)}, ckpt / "model.safetensors")
    elif what == "state":
        (ckpt / "state.json").write_text("[1, 2")
    return str(run)


def _file(w: World, name: str) -> str:
    return str(w.write(name, "not a folder"))


def _exits(w: World, name: str, at_import: bool) -> str:
    body = "import sys\nsys.exit(0)\n" if at_import else "import sys\ndef make():\n    sys.exit(0)\n"
    return f"{w.write(name, body)}:make"


# (id, args(world) -> argv, expected text in the one line)
CASES: list[tuple[str, Callable[[World], list[str]], str]] = [
    # targets: every coefficient a finite number in range
    ("target-nan", lambda w: ["profile", "tiny-mlp", "-t", _toml_target(w, "t-nan.toml", "throughput.static_w", "nan"), "--json"], "finite"),
    ("target-inf", lambda w: ["profile", "tiny-mlp", "-t", _toml_target(w, "t-inf.toml", "memory.sram_pj_per_byte", "inf"), "--json"], "finite"),
    ("target-bool", lambda w: ["profile", "tiny-mlp", "-t", _toml_target(w, "t-bool.toml", "memory.dram_pj_per_byte", "true")], "valid number"),
    ("target-negative", lambda w: ["profile", "tiny-mlp", "-t", _toml_target(w, "t-neg.toml", "throughput.static_w", "-1.0")], "static_w"),
    ("target-nan-as-objective", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", str(w.root / "never"),
                                           "-t", _toml_target(w, "t-nan2.toml", "throughput.static_w", "nan")], "finite"),
    # markup in user text is printed as text
    ("markup-spec-close", lambda w: ["profile", "[/x]"], "'[/x]'"),
    ("markup-spec-tag", lambda w: ["profile", "specs/[red]x.py:f"], "specs/[red]x.py"),
    ("markup-target-path", lambda w: ["profile", "tiny-mlp", "-t", "specs/[/bold]t.toml"], "[/bold]t.toml"),
    ("markup-recipe-path", lambda w: ["optimize", "-w", SPEC, "-r", "[distill]/[/r].toml", "-o", str(w.root / "never")], "[distill]/[/r].toml"),
    ("markup-recipe-key", lambda w: ["optimize", "-w", SPEC, "-r", _recipe(w, "r-key.toml", 'name = "[/x]"\n[distil]\nalpha = 0.5\n'),
                                     "-o", str(w.root / "never")], "`distil`"),
    # profile
    ("profile-top-negative", lambda w: ["profile", "tiny-mlp", "--top", "-1"], "--top"),
    ("profile-shape-too-large", lambda w: ["profile", "tiny-mlp", "--input-shape", "100000,100000,1000"], "input shape"),
    ("factory-sys-exit", lambda w: ["profile", _exits(w, "exits.py", False)], "SystemExit"),
    ("import-sys-exit", lambda w: ["profile", _exits(w, "exits_at_import.py", True)], "SystemExit"),
    # calibrate
    ("calibrate-string-j", lambda w: ["calibrate", _measurements(w, "m-str.json", [{"spec": "tiny-mlp", "measured_j": "1e-6"}] * 2),
                                      "-t", "mobile-npu", "--out", str(w.root / "fit.toml")], "measured_j"),
    ("calibrate-nan-j", lambda w: ["calibrate", str(w.write("m-nan.json", '[{"spec": "tiny-mlp", "measured_j": NaN}]')),
                                   "-t", "mobile-npu", "--out", str(w.root / "fit.toml")], "measured_j"),
    ("calibrate-unknown-precision", lambda w: ["calibrate", _measurements(w, "m-prec.json", [
        {"spec": "tiny-mlp", "measured_j": 1e-6, "weight_precision": "int99x"},
        {"spec": "ds-cnn", "measured_j": 1e-5}]), "-t", "mobile-npu", "--out", str(w.root / "fit.toml")], "int99x"),
    ("calibrate-out-directory", lambda w: ["calibrate", _measurements(w, "m-ok.json", [{"spec": "tiny-mlp", "measured_j": 1e-6}] * 2),
                                           "-t", "mobile-npu", "--out", str(w.root)], "is a directory"),
    # optimize
    ("recipe-lr-nan", lambda w: ["optimize", "-w", SPEC, "-r", _recipe(w, "r-nan.toml", "[train]\nlr = nan\n"), "-o", str(w.root / "never")], "train.lr"),
    ("recipe-weight-inf", lambda w: ["optimize", "-w", SPEC, "-r", _recipe(w, "r-inf.toml", "[objective]\nenergy_weight = inf\n"),
                                     "-o", str(w.root / "never")], "objective.energy_weight"),
    ("recipe-skip-everything", lambda w: ["optimize", "-w", SPEC, "-r", _recipe(w, "r-skip.toml", '[quantize]\nskip = ["*"]\n'),
                                          "-o", str(w.root / "never")], "nothing is quantized"),
    ("recipe-epochs-true", lambda w: ["optimize", "-w", SPEC, "-r", _recipe(w, "r-true.toml", "[train]\nepochs = true\n"),
                                      "-o", str(w.root / "never")], "train.epochs"),
    ("workload-sys-exit", lambda w: ["optimize", "-w", _exits(w, "wl_exits.py", False), "-r", str(w.root / "recipe.toml"),
                                     "-o", str(w.root / "never")], "SystemExit"),
    ("calibrate-bad-name", lambda w: ["calibrate", _measurements(w, "m-ok2.json", [{"spec": "tiny-mlp", "measured_j": 1e-6},
                                      {"spec": "ds-cnn", "measured_j": 1e-5}]), "-t", "mobile-npu", "--out", str(w.root / "fit.toml"),
                                      "--fit", "mac_pj.fp32", "--name", "[/X] Bad"], "[/X] Bad"),
    ("usage-error-markup", lambda w: ["profile", "tiny-mlp", "--top", "[/x]"], "--top"),
    ("optimize-out-is-file", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", _file(w, "out-file")], "is a file"),
    ("optimize-out-under-file", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", _file(w, "out-file2") + "/sub"], "not a folder"),
    ("optimize-garbage-run-json", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", _damaged_run(w, "r-json", "run.json")], "damaged"),
    ("checkpoint-other-architecture", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", _ckpt_run(w, "c-arch", "arch")], "another architecture"),
    ("checkpoint-pt-file", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", _ckpt_run(w, "c-pt", "pt")], "not a safetensors file"),
    ("checkpoint-garbage-state", lambda w: ["optimize", "-w", SPEC, "-r", str(w.root / "recipe.toml"), "-o", _ckpt_run(w, "c-state", "state")], "damaged"),
    # export
    ("export-truncated-model", lambda w: ["export", _damaged_run(w, "e-trunc", "truncated"), "-w", SPEC, "--out", str(w.root / "e.onnx")], "truncated"),
    ("export-empty-model", lambda w: ["export", _damaged_run(w, "e-empty", "empty"), "-w", SPEC, "--out", str(w.root / "e.onnx")], "is empty"),
    ("export-pt-model", lambda w: ["export", _damaged_run(w, "e-pt", "pt"), "-w", SPEC, "--out", str(w.root / "e.onnx")], "not a safetensors file"),
    ("export-garbage-run-json", lambda w: ["export", _damaged_run(w, "e-json", "run.json"), "--out", str(w.root / "e.onnx")], "damaged"),
    ("export-out-under-file", lambda w: ["export", str(w.run), "-w", SPEC, "--out", _file(w, "e-file") + "/e.onnx"], "not a folder"),
    ("export-out-directory", lambda w: ["export", str(w.run), "-w", SPEC, "--out", str(w.root)], "is a directory"),
    # bench: checked before any timing
    ("bench-json-directory", lambda w: ["bench", "-w", SPEC, "--run", str(w.run), "--json", str(w.root)], "is a directory"),
    ("bench-export-not-onnx", lambda w: ["bench", "-w", SPEC, "--export", str(w.write("x.onnx", "not onnx"))], "not an ONNX file"),
    ("bench-truncated-model", lambda w: ["bench", "-w", SPEC, "--run", _damaged_run(w, "b-trunc", "truncated")], "truncated"),
    # search, report, demo
    ("search-epochs-zero", lambda w: ["search", "-w", SPEC, "-t", "mobile-npu", "-o", str(w.root / "s"), "--trials", "1", "--epochs", "0"], "--epochs"),
    ("search-energy-inputs-zero", lambda w: ["search", "-w", SPEC, "-t", "mobile-npu", "-o", str(w.root / "s"), "--trials", "1",
                                             "--energy-inputs", "0"], "--energy-inputs"),
    ("search-out-is-file", lambda w: ["search", "-w", SPEC, "-t", "mobile-npu", "-o", _file(w, "s-file"), "--trials", "1"], "is a file"),
    ("report-partial-results", lambda w: ["report", str(w.write("rep1/results.json", '{"target": "mobile-npu"}').parent)], "metric_name"),
    ("report-results-missing-fields", lambda w: ["report", str(w.write("rep2/results.json", json.dumps({
        "target": "mobile-npu", "metric_name": "accuracy", "frontier": [{"trial": 1}], "summary": {"chosen_trial": 1}})).parent)],
     "incomplete or damaged"),
    ("demo-out-is-file", lambda w: ["demo", "--out", _file(w, "demo-file")], "is a file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(world, case, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(world.root / "cache"))
    _, argv, expect = case
    args = argv(world)  # builds the bad files first
    before = snapshot(world.root)
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, expect)
    assert snapshot(world.root) == before


def test_a_foreign_checkpoint_is_refused_and_the_run_kept(world, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(world.root / "cache"))
    other = parse_recipe({"name": "tiny-other", "train": {"epochs": 2, "lr": 1e-2}, "quantize": {"weight_bits": 8}})
    mine = world.root / "mine"
    with pytest.raises(KeyboardInterrupt):
        optimize(SPEC, other, mine, progress=False, baselines=False, on_epoch=_stop_at(1))
    shutil.rmtree(mine / "checkpoint")
    shutil.copytree(world.run / "checkpoint", mine / "checkpoint")  # another recipe's state, same architecture
    before = snapshot(mine)
    code, _, err = run_cli("optimize", "-w", SPEC, "-r", str(world.root / "other-recipe.toml"), "-o", str(mine))
    assert_one_line_error(code, err, "belongs to another run")
    assert snapshot(mine) == before


def _stop_at(epoch: int):
    def stop(at, record, model):
        if at == epoch:
            raise KeyboardInterrupt
    return stop


def test_a_finished_run_is_left_as_it_is(world, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(world.root / "cache"))
    run = world.copy_run("finished")
    before = snapshot(run)
    code, out, err = run_cli("optimize", "-w", SPEC, "-r", str(world.root / "recipe.toml"), "-o", str(run), "--no-progress")
    assert code == 0, err
    assert "left as it is" in out
    assert snapshot(run) == before
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["training"]["final_loss"]) and metrics["training"]["epochs_run"] == 2


def test_a_run_resumed_at_its_end_reports_its_last_epoch(world, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(world.root / "cache"))
    run = world.copy_run("crashed-before-metrics")
    (run / "metrics.json").unlink()
    metrics = optimize(SPEC, world.root / "recipe.toml", run, progress=False, baselines=False)
    assert math.isfinite(metrics["training"]["final_loss"])
    assert json.loads((run / "metrics.json").read_text(), parse_constant=_no_nan)


def _no_nan(name: str):
    raise AssertionError(f"metrics.json holds {name}")


def test_markup_in_a_recipe_name_prints_after_a_finished_training(world, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(world.root / "cache"))
    recipe = _recipe(world, "r-markup.toml", 'name = "[/x] [distill]"\n[train]\nepochs = 1\n')
    code, out, err = run_cli("optimize", "-w", SPEC, "-r", recipe, "-o", str(world.root / "markup-run"), "--no-progress")
    assert code == 0, err
    assert "[/x] [distill]" in out


def test_the_distill_section_an_unlabelled_workload_needs_is_named_in_the_error(world):
    out = world.root / "unlabelled-run"
    recipe = _recipe(world, "r-no-distill.toml", 'name = "no-distill"\n[train]\nepochs = 1\n')
    code, _, err = run_cli("optimize", "-w", f"{TESTS / 'tiny_workload.py'}:unlabelled", "-r", recipe, "-o", str(out),
                           "--no-progress")
    assert_one_line_error(code, err, "add a [distill] section")
    assert not out.exists()  # refused before the run directory is claimed


def test_an_unlabelled_workload_whose_baseline_needs_training_says_so(tmp_path):
    import dataclasses

    from tests.tiny_workload import unlabelled
    from wattless.errors import WorkloadError
    from wattless.optimize import baseline_model

    with pytest.raises(WorkloadError, match="has no labels, so its baseline cannot be trained"):
        baseline_model(dataclasses.replace(unlabelled(), needs_training=True), progress=False, cache=tmp_path)


def test_markup_in_a_workload_name_shows_in_the_progress_bar(capsys):
    import dataclasses

    from tests.tiny_workload import tiny
    from wattless.train import TrainSettings, train

    wl = dataclasses.replace(tiny(), name="[/x] [distill]")
    train(wl.build_model(), wl, TrainSettings(epochs=1, lr=1e-2, batch_size=256), progress=True)
    assert "training [/x] [distill]" in capsys.readouterr().out


def test_the_json_of_a_target_is_never_bare_nan(world):
    code, out, err = run_cli("profile", "tiny-mlp", "-t", _toml_target(world, "t-nan3.toml", "mac_pj.fp32", "nan"), "--json")
    assert code == 2 and out == ""


def test_damaged_safetensors_raise_by_name_from_python(world, tmp_path):
    from wattless.errors import DamagedFileError
    from wattless.train import load_state

    model = torch.nn.Linear(2, 2)
    (tmp_path / "z.safetensors").write_bytes(b"")
    with pytest.raises(DamagedFileError, match="empty"):
        load_state(model, tmp_path / "z.safetensors")


def test_a_diverging_loss_stops_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("WATTLESS_CACHE", str(tmp_path / "cache"))
    recipe = parse_recipe({"name": "hot", "train": {"epochs": 2, "lr": 1e8}})
    with pytest.raises(TrainingError, match="diverged.*learning rate"):
        optimize(SPEC, recipe, tmp_path / "run", progress=False, baselines=False)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_prune_with_the_energy_objective_resumes_bit_for_bit(monkeypatch, tmp_path):
    monkeypatch.setenv("WATTLESS_CACHE", str(tmp_path / "cache"))
    recipe = parse_recipe({"name": "pe", "train": {"epochs": 4, "lr": 1e-2}, "objective": {"energy_weight": 0.5},
                           "prune": {"pattern": "unstructured", "sparsity": 0.6,
                                     "schedule": {"start": 0.0, "end": 0.3}}})
    optimize(SPEC, recipe, tmp_path / "straight", progress=False, baselines=False)
    with pytest.raises(KeyboardInterrupt):
        optimize(SPEC, recipe, tmp_path / "resumed", progress=False, baselines=False, on_epoch=_stop_at(2))
    optimize(SPEC, recipe, tmp_path / "resumed", progress=False, baselines=False)
    assert (tmp_path / "straight" / "model.safetensors").read_bytes() == \
        (tmp_path / "resumed" / "model.safetensors").read_bytes()


def test_postgresql_urls_get_the_installed_driver():
    import importlib.util

    from wattless.search.storage import with_driver as _with_driver

    url = _with_driver("postgresql://u:pw@host:5432/db")
    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    assert url == f"postgresql+{driver}://u:pw@host:5432/db"
    assert _with_driver("postgresql+psycopg2://h/db") == "postgresql+psycopg2://h/db"
    assert _with_driver("sqlite:///x.db") == "sqlite:///x.db"


def test_the_interruption_message_quotes_the_actual_command(monkeypatch, tmp_path):
    import wattless.search

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wattless.search, "search", interrupted)
    out = tmp_path / "my search"
    code, _, err = run_cli("search", "-w", "mnist1d", "-t", "mobile-npu", "-o", str(out), "--minutes", "5")
    assert code == 130
    assert f"wattless search -w mnist1d -t mobile-npu -o '{out}' --minutes 5" in " ".join(err.split())


def test_bench_checks_its_json_path_before_timing(monkeypatch, tmp_path):
    from wattless import bench as bench_module
    from wattless.errors import BenchError

    monkeypatch.setattr(bench_module.run, "run_worker", lambda *a, **k: pytest.fail("timed before checking --json"))
    with pytest.raises(BenchError, match="is a directory"):
        bench_module.bench(SPEC, json_path=tmp_path)


# --- property-based: random bad values in target files and recipes --------------------------------------------

_TARGET_FIELDS = ["mac_pj.fp32", "mac_pj.int8", "op_pj.fp32", "memory.sram_bytes", "memory.sram_pj_per_byte",
                  "memory.dram_pj_per_byte", "throughput.dram_bytes_per_s", "throughput.static_w",
                  "throughput.macs_per_s.fp32", "sparsity.sparse_index_bits"]
_BAD_NUMBERS = st.sampled_from(["nan", "inf", "-inf", "-1.0", "-1e300", "true", "false", '"1.5"', "[1.0]", "{a = 1}",
                                "1e400"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_TARGET_FIELDS), value=_BAD_NUMBERS)
def test_random_bad_target_values_keep_the_contract(tmp_path, field, value):
    if field not in _flat(_npu()):
        return
    path = tmp_path / "bad.toml"
    path.write_text(_replace(tomli_w.dumps(_target_with(field, 12345.678)), value))
    code, out, err = run_cli("profile", "tiny-mlp", "-t", str(path), "--json")
    assert_one_line_error(code, err, "field `")
    assert out == ""


def _flat(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        keys |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def _replace(text: str, value: str) -> str:
    assert text.count("12345.678") == 1
    return text.replace("12345.678", value)


_RECIPE_FIELDS = {"train.lr": ["nan", "inf", "0.0", "-1.0", '"fast"', "true"],
                  "train.epochs": ["-1", "1.5", '"ten"', "nan", "true"],
                  "train.batch_size": ["0", "-3", "inf", "false"],
                  "train.weight_decay": ["nan", "-0.1", "inf"],
                  "objective.energy_weight": ["nan", "inf", "-1.0"],
                  "objective.energy_budget_uj": ["nan", "inf", "0.0", "-5.0"],
                  "objective.dual_lr": ["nan", "inf", "0.0"],
                  "quantize.weight_bits": ["1", "9", "nan", '"eight"', "true"],
                  "quantize.smooth": ["nan", "inf", "1.0", "0.0"],
                  "prune.sparsity": ["nan", "inf", "1.0", "-0.5", "false"],
                  "act_sparsity.l1": ["nan", "inf", "-1.0"]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_bad_recipe_values_keep_the_contract(tmp_path, data):
    field = data.draw(st.sampled_from(sorted(_RECIPE_FIELDS)))
    value = data.draw(st.sampled_from(_RECIPE_FIELDS[field]))
    section, key = field.split(".")
    extra = 'pattern = "unstructured"\n' if section == "prune" else ""
    path = tmp_path / "bad.toml"
    path.write_text(f'name = "r"\n[{section}]\n{key} = {value}\n{extra}')
    out = tmp_path / "never"
    code, _, err = run_cli("optimize", "-w", SPEC, "-r", str(path), "-o", str(out), "--no-progress")
    assert_one_line_error(code, err, f"`{section}")
    assert key in err
    assert not out.exists()
