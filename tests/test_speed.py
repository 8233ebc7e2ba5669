"""Performance pieces that must not change what is computed: the CPU dropout, the speed keys of every recipe, the
background reporter of Tune trials, the data-wait measurement and the null recipe."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

import zoo
from harness.run.tune_trial import BackgroundReports
from harness.study.spec import SpecError, expand_trials, load_study
from harness.training.context import TrialContext
from harness.training.speed import SpeedKeys, optimizer, prepare_model, speed_keys, to_format
from zoo.layers import Dropout, dropout, dropout_mask

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_dropout_drops_at_rate_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    keep, scale = dropout_mask((400_000,), p)
    rate = 1 - keep.float().mean().item()
    assert rate == pytest.approx(p, abs=4e-3)
    for lane in range(4):  # each 16-bit lane of the 64-bit draws is uniform, the top one included
        assert 1 - keep[lane::4].float().mean().item() == pytest.approx(p, abs=8e-3)
    y = dropout(torch.ones(400_000), p)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert set(torch.unique(y).tolist()) <= {0.0, torch.tensor(scale, dtype=torch.float32).item()}
    assert scale == pytest.approx(1 / (1 - p), rel=1e-3)


def test_dropout_is_seeded_by_torch_and_its_gradient_is_the_mask():
    x = torch.randn(8, 64, 32, requires_grad=True)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    b = dropout(x, 0.2)
    assert torch.equal(a, b)
    a.sum().backward()
    torch.manual_seed(3)
    keep, scale = dropout_mask(x.shape, 0.2)
    torch.testing.assert_close(x.grad, keep.float() * scale)


def test_dropout_module_matches_torch_where_it_defers_to_it():
    x = torch.randn(4, 16)
    m = Dropout(0.3)
    m.eval()
    assert torch.equal(m(x), x)  # eval: identity
    m.train()
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    with pytest.raises(ValueError):
        Dropout(1.5)
    assert "p=0.3" in repr(m)


def test_block_sharing_and_unet_use_the_fast_dropout():
    for name in ("D2S4I", "vdiff-tiny"):
        model = zoo.build(name)
        kinds = {type(m) for m in model.modules()}
        assert Dropout in kinds and torch.nn.Dropout not in kinds, name


# ------------------------------------------------------------------------------------------------------ speed keys
@pytest.mark.parametrize("recipe_study", ["block_sharing", "classical_constraints", "classical_generator",
                                          "mnist_compression", "toy_ddpm"])
def test_every_recipe_accepts_the_speed_keys_and_unset_keys_keep_the_hash(recipe_study):
    path = REPO / "studies" / f"{recipe_study}.yaml"
    plain = expand_trials(load_study(path, "smoke"))[0]
    same = expand_trials(load_study(path, "smoke", {"train.fused_optimizer": None}))[0]
    assert same.config_hash == plain.config_hash  # an unset key is left out of the hash
    keyed = expand_trials(load_study(path, "smoke", {"train.compile": True, "train.channels_last": True}))[0]
    assert keyed.config_hash != plain.config_hash
    assert keyed.train["compile"] is True and keyed.train["channels_last"] is True
    with pytest.raises(SpecError, match="compile"):
        load_study(path, "smoke", {"train.compile": "yes"}).study and expand_trials(
            load_study(path, "smoke", {"train.compile": "yes"}))


def test_optimizer_is_fused_by_default_and_plain_when_the_study_says_so():
    params = [torch.nn.Parameter(torch.randn(3))]
    fused = optimizer(torch.optim.AdamW, params, {}, "cpu", lr=1e-3)
    assert fused.defaults["fused"] is True
    plain = optimizer(torch.optim.AdamW, params, {"fused_optimizer": False}, "cpu", lr=1e-3)
    assert not plain.defaults.get("fused")
    assert optimizer(torch.optim.Adam, params, SpeedKeys(), "meta", lr=1e-3).defaults.get("fused") is not True


def test_fused_and_plain_adamw_train_the_same_model():
    torch.manual_seed(0)
    a = zoo.build("D1S8", width=32, head_dim=16, dropout=0.0)
    b = zoo.build("D1S8", width=32, head_dim=16, dropout=0.0)
    b.load_state_dict(a.state_dict())
    x, sigma = torch.randn(4, 3, 32, 32), torch.ones(4)
    for model, keys in ((a, {}), (b, {"fused_optimizer": False})):
        opt = optimizer(torch.optim.AdamW, model.param_groups(1e-3, 1e-4), keys, "cpu", lr=1e-3)
        for _ in range(3):
            opt.zero_grad()
            model(x, sigma).pow(2).mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_channels_last_changes_the_memory_format_not_the_output():
    model = zoo.build("disc-conv-reduce").eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    cl = prepare_model(model, {"channels_last": True})
    xc = to_format(x, {"channels_last": True})
    assert xc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(xc), ref, rtol=1e-4, atol=1e-5)
    assert to_format(x, {}) is x
    assert speed_keys({"compile": True}).compile is True and speed_keys(SpeedKeys()).compile is None


def test_compile_key_reaches_accelerate(tmp_path):
    from accelerate.state import AcceleratorState

    paths = {"run_dir": str(tmp_path), "cache_dir": str(tmp_path), "data_root": str(tmp_path)}
    try:
        for compile_key, backend in ((True, "inductor"), (None, "no")):
            AcceleratorState._reset_state(reset_partial_state=True)  # as in a fresh trial process
            acc = TrialContext({}, paths, lambda p: None).accelerator(compile=compile_key)
            assert str(acc.state.dynamo_plugin.backend).lower().endswith(backend)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_compiled_model_unwraps_to_the_plain_module_for_checkpoints_and_ema(tmp_path):
    from accelerate.state import AcceleratorState

    paths = {"run_dir": str(tmp_path), "cache_dir": str(tmp_path), "data_root": str(tmp_path)}
    try:
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = TrialContext({}, paths, lambda p: None).accelerator(compile=True)
        model = torch.nn.Linear(3, 2)
        prepared = acc.prepare(model)
        assert prepared is not model  # compiled (lazily: nothing runs here)
        assert acc.unwrap_model(prepared) is model
        assert list(acc.unwrap_model(prepared).state_dict()) == ["weight", "bias"]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


# ----------------------------------------------------------------------------------------------- reports, data wait
def test_background_reports_keep_order_and_the_final_report_waits_for_all():
    sent, gate = [], threading.Event()

    def slow_send(p):
        gate.wait(5)
        time.sleep(0.01)
        sent.append(p["step"])

    reports = BackgroundReports(slow_send)
    t = time.perf_counter()
    for step in range(1, 6):
        reports({"step": step, "final": False})
    assert time.perf_counter() - t < 0.5 and sent == []  # the training thread only enqueued
    gate.set()
    reports({"step": 6, "final": True})  # returns only when every report is sent
    assert sent == [1, 2, 3, 4, 5, 6]
    reports.close()


def test_background_reports_raise_a_send_error_in_the_training_thread_and_drop_the_rest():
    sent = []

    def send(p):
        if p["step"] == 2:
            raise ValueError("cannot serialise")
        sent.append(p["step"])

    reports = BackgroundReports(send)
    reports({"step": 1})
    reports({"step": 2})
    with pytest.raises(ValueError, match="serialise"):
        for step in range(3, 50):
            reports({"step": step})
            time.sleep(0.01)
    reports.close()
    assert sent == [1]


def test_data_wait_share_is_the_time_in_data_blocks_over_the_window(tmp_path):
    paths = {"run_dir": str(tmp_path), "cache_dir": str(tmp_path), "data_root": str(tmp_path)}
    ctx = TrialContext({}, paths, lambda p: None)
    t = time.perf_counter()
    with ctx.data_wait():
        time.sleep(0.05)
    time.sleep(0.05)
    share = ctx.data_wait_share(time.perf_counter() - t)
    assert 0.35 < share < 0.65
    assert ctx.data_wait_share(1.0) == 0.0  # read once


def test_recipes_report_data_wait_in_the_training_windows(tmp_path):
    from harness.bench.runs import training_windows

    _trial, reports = training_windows(REPO / "studies" / "block_sharing.yaml", "smoke", {}, 2, 2, tmp_path)
    assert len(reports) == 2
    assert all(0 < m["data_wait_share"] < 1 and m["images_per_s"] > 0 for m in reports)
