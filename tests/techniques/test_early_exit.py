"""Early exits: calibrated thresholds hold on held-out data, exited inputs skip work, paths are recorded."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wattless.energy import count
from wattless.models import DSCNN
from wattless.techniques.base import ApplyContext, apply_, full_path
from wattless.techniques.early_exit import EarlyExitModel, ExitConfig, greedy_thresholds
from wattless.workloads.digits import build_digits_cnn

AFTER = ["relu1", "relu2"]
DROP = 0.01


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models train several times faster on one thread than on two contending ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs_and_parity(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half easy (two blobs far apart on feature 0), half hard (3-bit sign parity near the origin)."""
    easy = torch.rand(n, generator=gen) < 0.5
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 8, generator=gen)
    x[easy, 0] = (2 * y[easy] - 1) * 6.0 + 0.5 * x[easy, 0]
    x[~easy, 0] = 0.3 * x[~easy, 0]
    parity = ((x[:, 1] > 0) ^ (x[:, 2] > 0) ^ (x[:, 3] > 0)).long()
    return x, torch.where(easy, y, parity), easy


def chain() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(8, 16), relu1=nn.ReLU(), fc2=nn.Linear(16, 64), relu2=nn.ReLU(),
        fc3=nn.Linear(64, 64), relu3=nn.ReLU(), fc4=nn.Linear(64, 2),
    ))


@pytest.fixture(scope="module")
def trained():
    gen = torch.Generator().manual_seed(0)
    (xtr, ytr, _), val, test = (blobs_and_parity(n, gen) for n in (4000, 2000, 2000))
    torch.manual_seed(0)
    model = chain()
    context = ApplyContext(example_input=xtr[:4], extras={"val": (val[0], val[1])})
    handle = apply_(model, ExitConfig(after=AFTER, target_accuracy_drop=DROP), context)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(600):
        i = torch.randint(0, len(xtr), (128,), generator=gen)
        logits = model(xtr[i])
        exit_loss = handle.loss(model, xtr[i], {"logits": logits, "targets": ytr[i]})
        loss = F.cross_entropy(logits, ytr[i]) + exit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.finish(model, context)
    model.eval()
    return model, handle, test


def full_accuracy(model: EarlyExitModel, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        _, final = model._run_all(x)
    return float((final.argmax(-1) == y).float().mean())


def test_apply_turns_the_model_into_an_early_exit_model(trained):
    model, handle, _ = trained
    assert isinstance(model, EarlyExitModel)
    assert model.exit_names == AFTER
    assert handle.report(model)["after"] == AFTER


def test_calibrated_thresholds_keep_accuracy_on_val_and_on_held_out_test(trained):
    model, handle, (x, y, _) = trained
    report = handle.report(model)
    assert report["calibrated"]
    assert report["val_accuracy"] >= report["val_accuracy_full"] - DROP
    with torch.no_grad():
        pred = model(x).argmax(-1)
    with torch.no_grad():
        final = model._run_all(x)[1].argmax(-1)
    acc, acc_full = float((pred == y).float().mean()), full_accuracy(model, x, y)
    # Held-out accuracy moves by sampling error: two standard errors of the paired difference.
    slack = 2 * math.sqrt(float((pred != final).sum())) / len(y)
    assert acc >= acc_full - DROP - slack, (acc, acc_full, slack)
    assert acc >= acc_full - 2 * DROP


def test_exited_inputs_cost_fewer_counted_macs(trained):
    model, _, (x, _, _) = trained
    hard = count(model, x[:64]).total("macs")
    with full_path(model):
        full = count(model, x[:64]).total("macs")
    assert sum(hard) / len(hard) < 0.5 * sum(full) / len(full)
    assert min(hard) < max(hard)  # the path depends on the input


def test_easy_inputs_take_the_first_exit_and_hard_ones_go_deeper(trained):
    model, _, (x, _, easy) = trained
    with torch.no_grad():
        model(x)
    exits = model.last_exits
    assert exits.shape == (len(x),)
    assert float((exits[easy] == 0).float().mean()) >= 0.99
    assert float((exits[~easy] > 0).float().mean()) >= 0.5


def test_exit_distribution_sums_to_one_and_accuracies_are_per_path(trained):
    model, handle, _ = trained
    report = handle.report(model)
    assert sum(report["exit_fraction"]) == pytest.approx(1.0)
    assert len(report["exit_fraction"]) == len(report["exit_accuracy"]) == len(report["head_accuracy"]) == 3
    assert len(report["thresholds"]) == 2


def test_hard_path_returns_what_the_full_path_returns(trained):
    model, _, (x, _, _) = trained
    with torch.no_grad():
        hard = model(x[:300])
        hard_exits = model.last_exits.clone()
        with full_path(model):
            full = model(x[:300])
    assert hard.shape == (300, 2)
    assert torch.allclose(hard, full, atol=1e-5)
    assert torch.equal(hard_exits, model.last_exits)


def test_training_forward_sets_soft_reach_probabilities():
    torch.manual_seed(0)
    model = chain()
    apply_(model, ExitConfig(after=AFTER, temperature=0.1), ApplyContext(example_input=torch.randn(2, 8)))
    model.train()
    logits = model(torch.randn(5, 8))
    assert logits.shape == (5, 2) and len(model.exit_logits) == 2
    conf = torch.stack([lg.softmax(-1).amax(-1) for lg in model.exit_logits])
    c = torch.sigmoid((conf - model.thresholds[:, None]) / 0.1)
    assert model.blocks.fc1.wattless_soft_prob is None  # before the first exit: always runs
    assert torch.allclose(model.blocks.fc2.wattless_soft_prob, 1 - c[0])
    assert torch.allclose(model.exits.relu2.wattless_soft_prob, 1 - c[0])
    assert torch.allclose(model.blocks.fc4.wattless_soft_prob, (1 - c[0]) * (1 - c[1]))
    model.blocks.fc4.wattless_soft_prob.sum().backward()
    assert model.exits.relu1.classifier.weight.grad.abs().sum() > 0
    model.eval()
    model(torch.randn(5, 8))
    assert model.blocks.fc4.wattless_soft_prob is None  # cleared, so the model deep-copies again
    assert isinstance(copy.deepcopy(model), EarlyExitModel)


def test_exit_loss_needs_targets_and_reaches_the_heads():
    torch.manual_seed(0)
    model = chain()
    context = ApplyContext(example_input=torch.randn(2, 8))
    handle = apply_(model, ExitConfig(after=AFTER, loss_weight=0.5), context)
    model.train()
    x, y = torch.randn(6, 8), torch.randint(0, 2, (6,))
    logits = model(x)
    with pytest.raises(ValueError, match="targets"):
        handle.loss(model, x, logits)
    loss = handle.loss(model, x, {"logits": logits, "targets": y})
    expected = 0.5 * sum(F.cross_entropy(lg, y) for lg in model.exit_logits) / 2
    assert torch.isclose(loss, expected)
    loss.backward()
    assert model.exits.relu2.classifier.weight.grad is not None


def test_invalid_after_names_say_which_names_are_valid():
    with pytest.raises(ValueError, match=r"\['relu9'\].*valid names: \['fc1', 'relu1'"):
        apply_(chain(), ExitConfig(after=["relu1", "relu9"]), ApplyContext(example_input=torch.randn(2, 8)))
    with pytest.raises(ValueError, match="fc4"):  # no exit after the final classifier itself
        apply_(chain(), ExitConfig(after=["fc4"]), ApplyContext(example_input=torch.randn(2, 8)))
    with pytest.raises(ValueError, match="twice"):
        apply_(chain(), ExitConfig(after=["relu1", "relu1"]), ApplyContext(example_input=torch.randn(2, 8)))
    with pytest.raises(ValueError, match=r"\['x'\] never called by forward"):  # any module: cut by path
        apply_(nn.Linear(8, 2), ExitConfig(after=["x"]), ApplyContext(example_input=torch.randn(2, 8)))


def test_finish_without_val_data_says_how_to_give_it():
    model = chain()
    handle = apply_(model, ExitConfig(after=AFTER), ApplyContext(example_input=torch.randn(2, 8)))
    with pytest.raises(ValueError, match=r"extras\['val'\]"):
        handle.finish(model, ApplyContext(example_input=torch.randn(2, 8)))


def test_features_and_head_models_keep_their_head_as_the_tail():
    torch.manual_seed(0)
    model = DSCNN().eval()
    x = torch.randn(4, 1, 49, 10)
    with torch.no_grad():
        reference = model(x)
    config = ExitConfig(after=["features.5", "features.11"], head="mlp")
    apply_(model, config, ApplyContext(example_input=x[:2]))
    assert model.exit_names == ["features.5", "features.11"]
    with torch.no_grad():
        model.thresholds.fill_(math.inf)
        assert torch.allclose(model(x), reference, atol=1e-5)
        assert torch.equal(model.last_exits, torch.full((4,), 2))
        model.thresholds.fill_(0.0)
        assert model(x).shape == (4, 12) and torch.equal(model.last_exits, torch.zeros(4, dtype=torch.long))
    model.train()
    model(x)
    assert model.tail.wattless_soft_prob.shape == (4,)


def test_a_forward_that_does_more_than_chain_then_head_is_refused():
    class Stem(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 8)
            self.features = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.features(self.stem(x)))

    with pytest.raises(ValueError, match="preprocessing"):
        apply_(Stem(), ExitConfig(after=["features.1"]), ApplyContext(example_input=torch.randn(2, 4)))


def test_conv_exits_pool_over_space():
    model = build_digits_cnn()
    x = torch.randn(3, 1, 8, 8)
    apply_(model, ExitConfig(after=["relu1"]), ApplyContext(example_input=x))
    model.eval()
    model.thresholds.fill_(0.0)
    with torch.no_grad():
        assert model(x).shape == (3, 10)
    names = {r["name"] for r in count(model, x).mean_records()}
    assert "exits.relu1.classifier" in names and "blocks.conv2" not in names


def test_greedy_thresholds_exit_early_only_where_it_costs_nothing():
    # Exit 0 is right on its 3 most confident inputs only; the final head is right everywhere.
    conf = torch.tensor([[0.99, 0.98, 0.97, 0.60, 0.55, 0.52]])
    correct = torch.tensor([[True, True, True, False, False, True]])
    thresholds = greedy_thresholds(conf, correct, torch.ones(6, dtype=torch.bool), max_drop=0.0)
    assert thresholds[0] == pytest.approx((0.97 + 0.60) / 2)
    never = greedy_thresholds(conf, ~correct, torch.ones(6, dtype=torch.bool), max_drop=0.0)
    assert math.isinf(never[0])
    everything = greedy_thresholds(conf, correct, torch.ones(6, dtype=torch.bool), max_drop=0.5)
    assert everything[0] == pytest.approx(0.52)
