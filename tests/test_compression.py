"""Compression utilities: pruning fractions and selection, permanence, sizes, quantisation, timing."""

from __future__ import annotations

import io
import time

import pytest
import torch
from torch import nn

from harness.eval.compression import (
    CompressionError,
    bnb_support,
    count_params,
    prunable_weights,
    prune_model,
    quantize_dynamic_int8,
    state_dict_bytes,
    time_per_call_ms,
)


class TinyUNet(nn.Module):
    """Declares its middle and extremes like the zoo's U-Nets do."""

    def __init__(self):
        super().__init__()
        self.inc = nn.Conv2d(1, 8, 3, padding=1)
        self.bot = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1))
        self.outc = nn.Conv2d(8, 1, 1)
        self.head = nn.Linear(16, 4)

    def compression_sets(self):
        return {"middle": ["bot"], "extremes": ["inc", "outc"]}

    def forward(self, x):
        return self.outc(self.bot(self.inc(x)))


def zeros(model, module_set="global"):
    return sum(int((m.weight == 0).sum()) for m, _ in prunable_weights(model, module_set))


@pytest.mark.parametrize("method", ["random", "l1"])
@pytest.mark.parametrize("module_set", ["global", "middle", "extremes"])
@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5, 0.7])
def test_pruning_zeroes_exactly_the_fraction_of_the_chosen_weights(method, module_set, amount):
    torch.manual_seed(0)
    model = TinyUNet()
    others = {n: p.clone() for n, p in model.named_parameters()}
    stats = prune_model(model, method, amount, module_set, seed=1)
    total = stats["pruned_set_weights"]
    assert zeros(model, module_set) == round(amount * total)
    assert stats["pruned_set_sparsity"] == pytest.approx(round(amount * total) / total)
    chosen = {id(m.weight) for m, _ in prunable_weights(model, module_set)}
    for name, p in model.named_parameters():  # nothing outside the set (and no bias) changed
        if id(p) not in chosen:
            assert torch.equal(p, others[name]), name


def test_l1_removes_the_smallest_magnitudes():
    torch.manual_seed(0)
    model = TinyUNet()
    before = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable_weights(model)])
    prune_model(model, "l1", 0.3)
    after = torch.cat([m.weight.detach().flatten() for m, _ in prunable_weights(model)])
    threshold = before.sort().values[round(0.3 * len(before)) - 1]
    assert bool((before[after == 0] <= threshold).all()) and bool((before[after != 0] >= threshold).all())


def test_pruning_is_permanent_and_the_saved_model_loads():
    model = TinyUNet()
    prune_model(model, "random", 0.5, seed=3)
    keys = set(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = TinyUNet()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert zeros(fresh) == zeros(model) and count_params(fresh)["nonzero_params"] == count_params(model)[
        "nonzero_params"]


def test_random_pruning_is_seeded():
    a, b = TinyUNet(), TinyUNet()
    b.load_state_dict(a.state_dict())
    prune_model(a, "random", 0.3, seed=7)
    prune_model(b, "random", 0.3, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_compressed_size_shrinks_with_sparsity():
    sizes = []
    for amount in (0.0, 0.3, 0.7):
        torch.manual_seed(0)
        model = TinyUNet()
        prune_model(model, "l1", amount)
        sizes.append(state_dict_bytes(model))
    # zeros do not shrink a plain save (a few bytes of pickle bookkeeping differ after prune.remove)
    assert sizes[2]["state_dict_bytes"] == pytest.approx(sizes[0]["state_dict_bytes"], rel=0.01)
    assert sizes[0]["compressed_bytes"] > sizes[1]["compressed_bytes"] > sizes[2]["compressed_bytes"]
    assert sizes[2]["compressed_bytes"] < 0.75 * sizes[0]["compressed_bytes"]


def test_bad_settings_and_undeclared_sets():
    with pytest.raises(CompressionError, match="unknown pruning method"):
        prune_model(TinyUNet(), "magnitude", 0.3)
    with pytest.raises(CompressionError, match="fraction"):
        prune_model(TinyUNet(), "l1", 1.5)
    with pytest.raises(CompressionError, match="declares no 'middle' module set"):
        prune_model(nn.Sequential(nn.Linear(2, 2)), "l1", 0.3, "middle")


def test_dynamic_int8_quantisation_of_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(16, 64)
    q = quantize_dynamic_int8(model)
    assert "Quantized" in type(q[0]).__name__ or "quantized" in type(q[0]).__module__
    assert torch.allclose(q(x), model(x), atol=0.05)
    assert state_dict_bytes(q)["state_dict_bytes"] < state_dict_bytes(model)["state_dict_bytes"]


def test_bitsandbytes_is_refused_with_a_reason_on_cpu():
    ok, why = bnb_support("cpu")
    assert not ok and "CUDA" in why


def test_timing_excludes_warm_up():
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        time.sleep(0.2 if calls["n"] <= 2 else 0.001)

    ms = time_per_call_ms(fn, warmup=2, repeats=5)
    assert calls["n"] == 7 and ms < 50


def test_score_net_middle_and_extremes_are_the_reports_sets():
    import zoo

    model = zoo.build("ncsn-mnist")
    middle = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                 for m, _ in prunable_weights(model, "middle"))
    ends = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
               for m, _ in prunable_weights(model, "extremes"))
    assert (middle, ends) == (942_592, 105_505)  # report sec. 4.2.2
