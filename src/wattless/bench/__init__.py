"""`wattless bench`: the wattless export beside what a user would run instead, on this machine, in one run.

    result = bench("mnist1d", run="runs/m1", json_path="bench.json")
    result["rows"]          # one record per runtime and batch size
    print_table(result)

Runtimes (RUNTIMES): PyTorch fp32 eager, PyTorch dynamic int8, ONNX Runtime fp32, ONNX Runtime
``quantize_dynamic``, ONNX Runtime ``quantize_static`` (QDQ), and the wattless export (`wattless.runtime`).
Each runtime runs in a fresh Python process that imports the same modules (torch, onnxruntime, wattless)
before loading its model, so peak resident memory compares like with like; the batches run in increasing
size, each peak read right after its batch. Inputs are the same arrays for every runtime: test inputs for
classifiers, and for sentence encoders ``seq_len`` real tokens per row (no padding anywhere).

Latency: ``warmup`` untimed calls, then ``repeats`` timed calls (or as many as fit in ``max_seconds``, at
least 10; each row records how many); median and 95th percentile. With ``rounds`` > 1 every runtime is
timed that many times, round-robin, each time in a fresh process, and the round with the lowest median is
kept (as timeit keeps its best): a burst of other work on the machine then spoils one round, not the row.
Every runtime
gets the same thread count (``threads``: torch.set_num_threads, ONNX Runtime intra-op threads, OMP). Energy:
joules per inference *estimated* on every built-in target from the model each runtime executes (fp32,
int8 for the post-training quantizers, the optimized model on its hard paths for wattless), and *measured*
with this machine's counter where one exists (never otherwise). The machine's load average at start and end
is recorded: other work on the cores slows every row.

The public names are those of ``__all__``; the modules beside this file hold one idea each: runtimes (the
runtimes by name), inputs (the arrays every runtime is timed on), process (the worker: one runtime timed in
its own process, and the subprocess protocol; ``python -m wattless.bench --worker SPEC.json`` runs
__main__), plan (the settings, checked), prepare (every runtime's file, size and estimated energy), rows
(BenchRow, speedups, the guard, the result JSON with machine info), table (the printed table), run (the
`bench` verb) and profile (ONNX Runtime's profiler summed per operator type: where a model's time goes).
"""

from wattless.bench.rows import BenchRow
from wattless.bench.run import bench
from wattless.bench.runtimes import AS_WRITTEN, GUARD_BASELINE, RUNTIMES, WATTLESS_FILE
from wattless.bench.table import guard_lines, print_table
from wattless.bench.process import worker
from wattless.bench.profile import OperatorTimes, operator_times
from wattless.kernels import CPU_FEATURES, cpu_features

__all__ = ["bench", "BenchRow", "print_table", "cpu_features", "RUNTIMES", "AS_WRITTEN", "GUARD_BASELINE",
           "CPU_FEATURES", "guard_lines", "worker", "WATTLESS_FILE", "operator_times", "OperatorTimes"]
