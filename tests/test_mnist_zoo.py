"""Tests of the MNIST-compression families (docs/papers.md, spec 2.1-2.3): the score-SDE tutorial
ScoreNet (zoo/score_net.py) and dome272's conditional DDPM U-Net (zoo/ddpm_unet.py), with grouped convolutions.

Both modules are imported explicitly: importing them registers their families.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zoo
import zoo.ddpm_unet  # noqa: F401  (registers the ddpm_unet family)
import zoo.score_net  # noqa: F401  (registers the score_net family)
from zoo import ZooError
from zoo.ddpm_unet import DDPMUNetConfig, pos_encoding
from zoo.score_net import ScoreNetConfig, diffusion_coeff, marginal_prob_std, resolve_groups

# Spec 2.1-2.3 [verified] counts; the baselines are the report's 1,115,297 and upstream's 23,334,017.
NCSN = {"ncsn-mnist": 1_115_297, "ncsn-mnist-g2": 682_145, "ncsn-mnist-g4": 465_569, "ncsn-mnist-gmax": 258_785}
DDPM = {"ddpm-unet-mnist": 23_334_017, "ddpm-unet-mnist-g2": 12_311_681, "ddpm-unet-mnist-g4": 6_800_513,
        "ddpm-unet-mnist-gmax": 1_363_073}
GROUPS = {"": 1, "-g2": 2, "-g4": 4, "-gmax": "max"}
TINY_UNET = {"channels": (8, 16, 32, 32), "time_dim": 16, "input_size": 16}
CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def three_by_three(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CONVS) and m.kernel_size == (3, 3)]


def ncsn_inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.rand(n, generator=g) * 0.99 + 0.01


def unet_inputs(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, size, size, generator=g), torch.randint(1, 1000, (n,), generator=g),
            torch.randint(0, 10, (n,), generator=g))


# ------------------------------------------------------------------------------------------------ registry, counts


def test_presets_are_registered_and_cite_the_report():
    assert zoo.names("ncsn-mnist*") == list(NCSN) and zoo.names("ddpm-unet-mnist*") == list(DDPM)
    for name in [*NCSN, *DDPM]:
        assert "CS682" in zoo.entry(name).doc
        assert zoo.config(name).groups == GROUPS[name.removeprefix("ncsn-mnist").removeprefix("ddpm-unet-mnist")]
    assert zoo.entry("ncsn-mnist").family == "score_net" and zoo.entry("ddpm-unet-mnist").family == "ddpm_unet"


@pytest.mark.parametrize("name", [*NCSN, *DDPM])
def test_param_counts_of_presets(name):
    expected = {**NCSN, **DDPM}[name]
    assert zoo.param_count(name) == zoo.entry(name).recorded_params == expected  # built on the meta device


def test_other_channel_counts_of_the_unet():
    # Spec 2.2: 3 channels conditional 23,335,299 (the report's number); unconditional 3-channel UNet 23,332,739.
    assert zoo.param_count("ddpm-unet-mnist", in_channels=3, out_channels=3) == 23_335_299
    assert zoo.param_count("ddpm-unet-mnist", in_channels=3, out_channels=3, num_classes=0) == 23_332_739


def test_unet_per_module_counts_match_the_spec():
    with torch.device("meta"):
        model = zoo.build("ddpm-unet-mnist")
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    assert counts == {
        "inc": 37_696, "down1": 328_576, "down2": 1_246_976, "down3": 2_427_136, "sa1": 99_584, "sa2": 395_776,
        "sa3": 395_776, "sa4": 99_584, "sa5": 25_216, "sa6": 25_216, "bot1": 3_540_992, "bot2": 4_720_640,
        "bot3": 1_770_496, "up1": 6_228_864, "up2": 1_566_144, "up3": 422_720, "outc": 65, "label_emb": 2_560}


def test_score_net_keeps_the_tutorial_names_and_a_frozen_fourier_buffer():
    with torch.device("meta"):
        model = zoo.build("ncsn-mnist")
    state = model.state_dict()
    # The report's module list (sec. 4.2.2), "module." prefix dropped.
    report = {"conv1.weight": 288, "dense1.dense.weight": 8192, "dense1.dense.bias": 32, "conv2.weight": 18432,
              "conv4.weight": 294912, "dense4.dense.bias": 256, "tconv4.weight": 294912, "tconv3.weight": 147456,
              "tconv2.weight": 36864, "dense7.dense.weight": 8192, "tconv1.weight": 576, "tconv1.bias": 1}
    assert {k: state[k].numel() for k in report} == report
    assert state["embed.0.W"].shape == (128,) and "embed.0.W" not in dict(model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == 1_115_297  # W is a buffer: total == trainable


# -------------------------------------------------------------------------------------------- grouped convolutions


@pytest.mark.parametrize("suffix", list(GROUPS))
def test_score_net_grouping_per_layer(suffix):
    with torch.device("meta"):
        model = zoo.build(f"ncsn-mnist{suffix}")
    g = GROUPS[suffix]
    got = {name: m.groups for name, m in three_by_three(model)}
    hidden = {"conv2": (32, 64), "conv3": (64, 128), "conv4": (128, 256), "tconv4": (256, 128),
              "tconv3": (256, 64), "tconv2": (128, 32)}
    want = {"conv1": 1, "tconv1": 1}  # image-facing: 1 channel in or out
    want |= {name: math.gcd(*io) if g == "max" else g for name, io in hidden.items()}
    assert got == want
    assert [(s.name, s.c_in, s.c_out) for s in model.config.convs()] == [
        (n, m.in_channels, m.out_channels) for n, m in three_by_three(model)]


@pytest.mark.parametrize("suffix", list(GROUPS))
def test_unet_grouping_per_layer(suffix):
    with torch.device("meta"):
        model = zoo.build(f"ddpm-unet-mnist{suffix}")
    g = GROUPS[suffix]
    convs = three_by_three(model)
    layout = model.config.convs()
    assert len(convs) == len(layout) == 32  # inc 2 + 3 Downs x 4 + bottleneck 6 + 3 Ups x 4
    for (name, m), (_, ci, co, _, _) in zip(convs, layout):
        assert (m.in_channels, m.out_channels) == (ci, co), name
        expected = 1 if name == "inc.double_conv.0" and g != "max" else (math.gcd(ci, co) if g == "max" else g)
        assert m.groups == expected == resolve_groups(g, ci, co), name
    assert model.inc.double_conv[0].groups == 1 and model.outc.groups == 1  # c_in = 1; the 1x1 outc is not grouped
    if g != 1:
        assert all(m.groups > 1 for name, m in convs if name != "inc.double_conv.0")


@pytest.mark.parametrize(
    ("name", "groups", "fragment"),
    [
        ("ncsn-mnist", 3, r"groups=3 does not divide the channels of conv2 \(32 -> 64\)"),
        ("ncsn-mnist", 64, "groups=64 does not divide the channels of conv2"),
        ("ncsn-mnist", "min", "groups must be a positive integer .* or 'max', got 'min'"),
        ("ncsn-mnist", 0, "groups must be a positive integer"),
        ("ddpm-unet-mnist", 3, r"groups=3 does not divide the channels of inc.conv_b \(64 -> 64\)"),
        ("ddpm-unet-mnist", 128, r"groups=128 does not divide the channels of inc.conv_b"),
        ("ddpm-unet-mnist", "depthwise", "groups must be a positive integer"),
    ],
)
def test_bad_groups_raise_one_sentence(name, groups, fragment):
    cls = ScoreNetConfig if name.startswith("ncsn") else DDPMUNetConfig
    with pytest.raises(ValueError, match=fragment) as info:
        cls(groups=groups)
    assert "\n" not in str(info.value)
    with pytest.raises(ZooError, match=f"invalid zoo model '{name}': {fragment}") as info:
        zoo.build(name, groups=groups)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("cls", "overrides", "fragment"),
    [
        (ScoreNetConfig, {"channels": (32, 64, 128)}, "tuple of 4 widths"),
        (ScoreNetConfig, {"channels": (16, 64, 128, 256)}, "multiple of 32"),
        (ScoreNetConfig, {"embed_dim": 255}, "embed_dim must be even"),
        (ScoreNetConfig, {"input_size": 16}, "input_size must be >= 17"),
        (ScoreNetConfig, {"sigma": 1.0}, "sigma must be > 1"),
        (DDPMUNetConfig, {"input_size": 28}, "multiple of 8 .*pad or resize MNIST to 32"),
        (DDPMUNetConfig, {"time_dim": 255}, "time_dim must be even"),
        (DDPMUNetConfig, {"num_classes": -1}, "num_classes must be >= 0"),
        (DDPMUNetConfig, {"heads": 3}, "heads=3 must divide"),
        (DDPMUNetConfig, {"channels": (64, 128, 256)}, "tuple of 4 positive widths"),
    ],
)
def test_config_validation(cls, overrides, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        cls(**overrides)
    assert "\n" not in str(info.value)


def test_config_overrides_and_tuples():
    assert ScoreNetConfig(channels=[32, 64, 96, 128]).channels == (32, 64, 96, 128)
    assert zoo.config("ddpm-unet-mnist", groups="max").groups == "max"
    assert zoo.config("ncsn-mnist-g2", groups=4).groups == 4
    with pytest.raises(ZooError, match="expected"):
        zoo.build("ncsn-mnist", groups=2.0)


# ----------------------------------------------------------------------------------------- forward, grads, scaling


@pytest.mark.parametrize("name", list(NCSN))
def test_score_net_forward_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = zoo.build(name)
    x, t = ncsn_inputs()
    score = model(x, t)
    assert score.shape == (2, 1, 28, 28) and torch.isfinite(score).all()
    assert torch.equal(model(x, 0.5), model(x, torch.full((2,), 0.5)))
    score.pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_score_net_other_sizes_derive_output_paddings():
    assert [s.output_padding for s in ScoreNetConfig().convs()[4:7]] == [0, 1, 1]  # the tutorial's at 28
    for size in (17, 32):
        model = zoo.build("ncsn-mnist-g2", input_size=size)
        assert model(torch.rand(2, 1, size, size), torch.rand(2)).shape == (2, 1, size, size)
    model = zoo.build("ncsn-mnist")
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\)"):
        model(torch.rand(2, 1, 32, 32), torch.rand(2))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(torch.rand(2, 1, 28, 28), torch.rand(3))


def test_score_is_divided_by_marginal_prob_std():
    torch.manual_seed(1)
    model = zoo.build("ncsn-mnist").eval()
    raw = {}
    model.tconv1.register_forward_hook(lambda m, i, o: raw.update(out=o))
    x, t = ncsn_inputs(seed=3)
    with torch.no_grad():
        score = model(x, t)
    std = model.marginal_prob_std(t)
    assert torch.allclose(score * std[:, None, None, None], raw["out"], rtol=1e-5, atol=1e-6)
    # VE SDE, sigma 25 (spec 2.1): std(t) = sqrt((25^(2t) - 1) / (2 ln 25)), ~9.85 at t = 1; g(t) = 25^t.
    ts = torch.tensor([1e-5, 0.3, 1.0], dtype=torch.float64)
    closed = torch.sqrt((25.0 ** (2 * ts) - 1) / (2 * math.log(25.0)))
    assert torch.allclose(marginal_prob_std(ts, 25.0), closed, rtol=1e-10)
    assert float(model.marginal_prob_std(torch.tensor(1.0))) == pytest.approx(9.8452, abs=1e-4)
    assert torch.allclose(diffusion_coeff(ts, 25.0), 25.0**ts) and float(model.diffusion_coeff(torch.tensor(0.0))) == 1
    assert zoo.build("ncsn-mnist", sigma=5.0).marginal_prob_std(torch.tensor(1.0)) < 9  # sigma is the config's


@pytest.mark.parametrize("name", list(DDPM))
def test_unet_forward_at_true_size(name):
    torch.manual_seed(0)
    model = zoo.build(name).eval()
    x, t, y = unet_inputs()
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t)
    assert cond.shape == uncond.shape == (2, 1, 32, 32) and torch.isfinite(cond).all()
    assert not torch.allclose(cond, uncond)  # labels are added to the embedding; y=None is the CFG null branch


def test_unet_gradient_reaches_every_parameter_at_true_size():
    torch.manual_seed(0)
    model = zoo.build("ddpm-unet-mnist")
    x, t, y = unet_inputs()
    model(x, t, y).pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("groups", [2, 4, "max"])
def test_unet_gradient_reaches_every_parameter_grouped_tiny(groups):
    torch.manual_seed(0)
    model = zoo.build("ddpm-unet-mnist", groups=groups, **TINY_UNET)
    x, t, y = unet_inputs(size=16)
    out = model(x, t, y)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_unet_unconditional_and_input_checks():
    model = zoo.build("ddpm-unet-mnist", num_classes=0, **TINY_UNET)
    assert not hasattr(model, "label_emb")
    x, t, y = unet_inputs(size=16)
    assert model(x, t).shape == (2, 1, 16, 16)
    assert torch.equal(model(x, 7), model(x, torch.full((2,), 7)))
    with pytest.raises(ValueError, match="unconditional model"):
        model(x, t, y)
    cond = zoo.build("ddpm-unet-mnist", **TINY_UNET)
    with pytest.raises(ValueError, match="multiples of 8"):
        cond(torch.randn(2, 1, 28, 28), t, y)
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        cond(x, t, y[:1])


def test_pos_encoding_is_upstreams():
    t = torch.tensor([0, 1, 999])
    enc = pos_encoding(t, 8)
    assert torch.equal(enc[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))
    inv_freq = torch.tensor([10000 ** (-k / 8) for k in (0, 2, 4, 6)])
    assert torch.allclose(enc[2], torch.cat([torch.sin(999 * inv_freq), torch.cos(999 * inv_freq)]), atol=1e-5)


def test_golden_output_statistics():
    torch.manual_seed(0)
    ncsn = zoo.build("ncsn-mnist").eval()
    torch.manual_seed(0)
    unet = zoo.build("ddpm-unet-mnist", **TINY_UNET).eval()
    with torch.no_grad():
        score = ncsn(torch.linspace(0, 1, 2 * 28 * 28).reshape(2, 1, 28, 28), torch.tensor([0.1, 0.9]))
        eps = unet(torch.linspace(-1, 1, 2 * 16 * 16).reshape(2, 1, 16, 16), torch.tensor([10, 900]),
                   torch.tensor([1, 8]))
    assert float(score.mean()) == pytest.approx(GOLDEN["ncsn_mean"], rel=1e-3, abs=1e-5)
    assert float(score.std()) == pytest.approx(GOLDEN["ncsn_std"], rel=1e-3)
    assert float(eps.mean()) == pytest.approx(GOLDEN["unet_mean"], rel=1e-3, abs=1e-5)
    assert float(eps.std()) == pytest.approx(GOLDEN["unet_std"], rel=1e-3)


GOLDEN = {"ncsn_mean": -3.18298, "ncsn_std": 4.72607, "unet_mean": -0.385483, "unet_std": 0.511027}  # torch 2.14.1 CPU


# ---------------------------------------------------------------------------------------- measurement, interface


def counted_flops(model: nn.Module, *inputs) -> int:
    """2 x multiply-adds measured with forward hooks on convs, Linears and attention (MHA projections are not Linear
    calls: 4 L C^2 for q/k/v/out plus 2 L^2 C for QK^T and AV)."""
    macs = [0]

    def hook(m, args, out):
        n = args[0].shape[0]
        if isinstance(m, nn.ConvTranspose2d):  # weight (c_in, c_out / g, 3, 3), once per input pixel
            macs[0] += n * m.weight.numel() * args[0].shape[-2] * args[0].shape[-1]
        elif isinstance(m, nn.Conv2d):  # weight (c_out, c_in / g, k, k), once per output pixel
            macs[0] += n * m.weight.numel() * out.shape[-2] * out.shape[-1]
        elif isinstance(m, nn.MultiheadAttention):  # batch_first tokens (N, L, C)
            length, c = args[0].shape[1], args[0].shape[2]
            macs[0] += n * (4 * length * c * c + 2 * length * length * c)
        elif isinstance(m, nn.Linear):
            macs[0] += m.weight.numel() * args[0].numel() // args[0].shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.MultiheadAttention))]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return 2 * macs[0] // inputs[0].shape[0]


@pytest.mark.parametrize("suffix", list(GROUPS))
def test_flops_match_measured_and_shrink_with_groups(suffix):
    ncsn, unet = f"ncsn-mnist{suffix}", f"ddpm-unet-mnist{suffix}"
    x, t = ncsn_inputs()
    assert zoo.flops(ncsn) == counted_flops(zoo.build(ncsn), x, t)
    ux, ut, uy = unet_inputs(size=16)
    tiny = zoo.build(unet, **TINY_UNET)
    assert zoo.flops(unet, **TINY_UNET) == counted_flops(tiny, ux, ut, uy)
    if suffix:
        assert 0 < zoo.flops(ncsn) < zoo.flops("ncsn-mnist") and 0 < zoo.flops(unet) < zoo.flops("ddpm-unet-mnist")
    flops_ladder = [zoo.flops(f"ncsn-mnist{s}") for s in GROUPS] + [zoo.flops(f"ddpm-unet-mnist{s}") for s in GROUPS]
    assert flops_ladder[:4] == sorted(flops_ladder[:4], reverse=True)
    assert flops_ladder[4:] == sorted(flops_ladder[4:], reverse=True)


@pytest.mark.parametrize("name", ["ncsn-mnist-g2", "ddpm-unet-mnist-g4"])
def test_param_groups_and_summary_fields(name):
    with torch.device("meta"):
        model = zoo.build(name)
    groups = model.param_groups(1e-4, 0.01)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    row = zoo.describe(name)
    assert row["params"] == zoo.entry(name).recorded_params and row["gflops"] > 0
    assert row["groups"] == zoo.config(name).groups and "channels" in row
