"""`wattless export`: an optimized model as one ONNX file that ONNX Runtime runs with integer kernels.

    report = export_run("runs/m1", "m1.onnx")          # or export_model(model, workload, "m1.onnx")
    report.parity.passed, report.size_bytes, report.layers

What the file holds (docs/EXPORT.md has the whole story), one module each:

- report      Tolerance, Parity, ExportReport: what the parity check accepts and what an export reports.
- graph       the ONNX graph under construction (unique names, shared constants) and the emitters' context.
- cut         structurally pruned channels, neurons and heads cut out of the tensors (the pruning
              technique's structural_cuts); unstructured and 2:4 zeros stay dense (no sparse CPU kernel).
- qlayers     quantized layers on integer kernels (MatMulIntegerToFloat, ConvInteger, MatMulNBits, per-token
              MatMulInteger, SmoothQuant's Div), reading the quantization technique's integer_weights/act_scale.
- tokens      per-token symmetric activations: one per-axis QuantizeLinear per shared input, MatMulIntegerToFloat
              with no zero-point correction, the rows layout of an encoder's activations.
- table       the module-to-emitter table; ``translation(cls)`` registers an emitter for a module class.
- walk        the walk: leaf modules through the table, torch.fx graphs for the rest.
- fuse        requantization: an integer conv feeding only the next quantizer becomes one QLinearConv.
- moe         mixture-of-experts blocks: TopK routing, each expert on its own tokens, ``route.*`` outputs.
- exits       early exits as ONNX ``If`` nodes; the ``exit`` output says where each input stopped.
- classifier  a classifier's graph (input ``x``, ``logits``).
- bert        BERT sentence encoders (MultiHeadAttention, int8 word rows, mean-pooled normalised embedding).
- parity      the parity check against the PyTorch model, including the runtime's kernel form (check_forms).
- write       the entry points: the deployed copy (every technique's convert step), the portable products
              (wattless.kernels), the atomic write.

Every export ends with a parity check against the PyTorch model (outputs and the workload's metric on its
eval split); the file appears at ``out`` only when it passes, written atomically.
"""

import sys
import types

from wattless.export import exits, moe  # noqa: F401  (register the translations of ExitHead and MoEMLP)
from wattless.export.report import ExportReport, Parity, Tolerance
from wattless.export.write import FORMAT, OPSET, export_model, export_run

__all__ = ["export_run", "export_model", "ExportReport", "Parity", "Tolerance", "FORMAT", "OPSET"]


class _Package(types.ModuleType):
    """``wattless.export(model, example_inputs, path)`` calls wattless.api.export while the package keeps its
    modules (a function bound to the name would hide ``wattless.export.parity`` and the rest)."""

    def __call__(self, *args, **kwargs):
        from wattless.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
