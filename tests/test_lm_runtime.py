"""The real SmolLM2-135M through recipe -> export -> runtime: the one heavy test of the decoder path
(WATTLESS_HEAVY=1 or -m heavy; minutes on 2 cores)."""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")


@pytest.mark.slow
@pytest.mark.heavy
def test_smollm2_int4_export_answers_like_pytorch(tmp_path):
    from wattless.export.lm import export_decoder, torch_greedy
    from wattless.optimize import apply_context
    from wattless.recipe import apply_recipe, load_recipe
    from wattless.runtime import load
    from wattless.workloads import get_workload

    wl = get_workload("smollm2")
    model = wl.build_model()
    recipe = load_recipe("recipes/smollm2-int4.toml")
    fast = recipe.model_copy(update={"weight_only": recipe.weight_only.model_copy(update={"method": "rtn"})})
    apply_recipe(model, fast, apply_context(wl))  # on this reference's exact grid RTN and GPTQ give the same codes
    report = export_decoder(model, tmp_path / "lm.onnx", windows=wl.test.inputs[:2], tokenizer="smollm2",
                            accuracy_level=0, greedy_tokens=12)
    assert report.parity["passed"] and report.size_bytes < 250e6
    lm = load(report.path, threads=2)
    answer = lm.generate("What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer.text
    ids = lm.prompt_ids("What is the capital of France?")
    assert answer.tokens == torch_greedy(model, ids, len(answer.tokens))[0]
    fast = export_decoder(model, tmp_path / "lm4.onnx", windows=wl.test.inputs[:2], tokenizer="smollm2",
                          accuracy_level=4, greedy_tokens=4)  # the shipped setting: int8 activations
    assert fast.parity["passed"] and fast.parity["perplexity_onnx"] < 1.01 * fast.parity["perplexity_torch"]
    # int8 activations may part from PyTorch's greedy tokens at a near tie: where they do, the position and the
    # gap between the two tokens' PyTorch logits are what the export's parity check records
    from wattless.export.lm import _greedy

    (row,) = _greedy(model, load(fast.path, threads=2), [ids], 12)
    print(row)
    if not row["equal"]:
        _, steps = torch_greedy(model, ids, row["first_difference"] + 1)
        logit = steps[row["first_difference"]]
        assert logit[row["torch_token"]] - logit[row["onnx_token"]] < 1.0  # a near tie, not a broken model
