"""Tests of the toy DDPM MLP family (zoo/toy_mlp.py): the CS726 HW2 report's model ladder (docs/papers.md, spec 3.4).

``zoo.toy_mlp`` is imported explicitly: importing it registers the family.
"""

from __future__ import annotations

import pytest
import torch

import zoo
import zoo.toy_mlp  # noqa: F401  (registers the toy_mlp family)
from harness.diffusion.ddpm import DDPM
from zoo import ZooError
from zoo.toy_mlp import SinusoidalTimeEmbedding, ToyMLPConfig, build_model, flops, parse_name

PRESETS = {"toy-mlp-1x64": (64,), "toy-mlp-2x64": (64, 64), "toy-mlp-64-128-128": (64, 128, 128)}


def mlp_params(hidden, n_dim=3, time_dim=32, learned=False):
    dims = [n_dim + time_dim, *hidden, n_dim]
    count = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    return count + (2 * time_dim + time_dim * time_dim + time_dim if learned else 0)


def inputs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 50, (n,), generator=g)


# ------------------------------------------------------------------------------------------------ registry, names


def test_presets_are_registered_and_cite_the_report():
    assert zoo.names("toy-mlp-*") == list(PRESETS)
    for i, name in enumerate(PRESETS, start=1):
        doc = zoo.entry(name).doc
        assert f"Model {i} of the report" in doc and "CS726 HW2" in doc and "Table 3" in doc
        cfg = zoo.config(name)
        assert cfg.hidden == PRESETS[name] and cfg.activation == "relu" and cfg.n_dim == 3


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_counts_of_presets(name):
    expected = {"toy-mlp-1x64": 2_499, "toy-mlp-2x64": 6_659, "toy-mlp-64-128-128": 27_523}[name]
    assert zoo.param_count(name) == zoo.entry(name).recorded_params == expected == mlp_params(PRESETS[name])
    assert zoo.param_count(name, time_embed="learned") == mlp_params(PRESETS[name], learned=True)
    assert zoo.param_count(name, time_dim=16, n_dim=2) == mlp_params(PRESETS[name], n_dim=2, time_dim=16)


@pytest.mark.parametrize(
    ("name", "hidden"),
    [("toy-mlp-4x64", (64,) * 4), ("toy-mlp-10x256", (256,) * 10), ("toy-mlp-32-16", (32, 16)),
     ("toy-mlp-100", (100,)), ("toy-mlp-1x64", (64,)), ("toy-mlp-64-128-128", (64, 128, 128))],
)
def test_parametric_names(name, hidden):
    cfg = parse_name(name)
    assert cfg == ToyMLPConfig(hidden=hidden, activation="relu")
    assert zoo.config(name) == cfg  # presets and the parser agree on the same model
    assert zoo.param_count(name) == mlp_params(hidden)
    assert zoo.describe(name)["depth"] == len(hidden)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("toy-mlp-0x64", "L must be >= 1"),
        ("toy-mlp-2x0", "width must be >= 1"),
        ("toy-mlp-64-0-32", "width must be >= 1"),
        ("toy-mlp-064", "leading zeros"),
        ("toy-mlp-abc", "malformed"),
        ("toy-mlp-", "malformed"),
        ("toy-mlp-2x64x3", "malformed"),
        ("toy-mlp-64--128", "malformed"),
    ],
)
def test_malformed_names_raise_one_sentence(name, fragment):
    with pytest.raises(ZooError, match=fragment) as info:
        zoo.entry(name)
    message = str(info.value)
    assert "\n" not in message and name in message and "toy-mlp-<L>x<W>" in message


def test_other_names_are_not_this_familys():
    for name in ("D8", "toy-mlp", "mlp-1x64", "resnet50", "toy-mlp2x64"):
        assert parse_name(name) is None
    with pytest.raises(ZooError, match="unknown zoo name"):
        zoo.entry("toy-mlp")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"hidden": ()}, "non-empty"),
        ({"hidden": (64, 0)}, "width must be an integer >= 1"),
        ({"n_dim": 0}, "n_dim"),
        ({"time_dim": 31}, "even"),
        ({"time_dim": 0}, "time_dim must be >= 1"),
        ({"time_embed": "fourier"}, "time_embed must be one of sinusoidal, learned"),
        ({"max_t": 0}, "max_t"),
        ({"activation": "tanh"}, "activation must be one of relu, silu, gelu"),
    ],
)
def test_config_validation(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        ToyMLPConfig(**overrides)
    with pytest.raises(ZooError, match=f"invalid zoo model 'toy-mlp-1x64': .*{fragment}"):
        zoo.build("toy-mlp-1x64", **overrides)


def test_config_defaults_and_overrides():
    cfg = ToyMLPConfig()
    assert (cfg.hidden, cfg.n_dim, cfg.time_dim, cfg.time_embed, cfg.max_t, cfg.activation) == (
        (64, 128, 128), 3, 32, "sinusoidal", 1000, "silu")
    assert ToyMLPConfig(hidden=[8, 8]).hidden == (8, 8)  # lists become tuples (hashable)
    assert zoo.config("toy-mlp-2x64", hidden=[32, 16]).hidden == (32, 16)
    assert ToyMLPConfig(time_embed="learned", time_dim=7).time_dim == 7  # odd is fine without sin/cos halves


# ----------------------------------------------------------------------------------------------- forward, grads


@pytest.mark.parametrize("time_embed", ["sinusoidal", "learned"])
def test_forward_shapes_with_int_and_tensor_t(time_embed):
    torch.manual_seed(0)
    model = zoo.build("toy-mlp-2x64", time_embed=time_embed, max_t=50)
    x, t = inputs()
    y = model(x, t)
    assert y.shape == (5, 3) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert torch.equal(model(x, 7), model(x, torch.full((5,), 7)))
    assert torch.equal(model(x, torch.tensor(7)), model(x, 7))
    assert not torch.allclose(model(x, 0), model(x, 49))  # the output depends on t
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        model(torch.randn(5, 2), t)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        model(x, torch.arange(4))


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("time_embed", ["sinusoidal", "learned"])
def test_every_parameter_gets_a_gradient(activation, time_embed):
    torch.manual_seed(1)
    model = zoo.build("toy-mlp-64-128-128", activation=activation, time_embed=time_embed, max_t=50)
    x, t = inputs(16)
    model(x, t).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_golden_output_statistics():
    torch.manual_seed(0)
    model = zoo.build("toy-mlp-64-128-128").eval()
    x, t = torch.linspace(-1, 1, 24).reshape(8, 3), torch.arange(8) * 6
    with torch.no_grad():
        y = model(x, t)
    assert float(y.mean()) == pytest.approx(-0.011854, abs=1e-5)
    assert float(y.std()) == pytest.approx(0.037954, abs=1e-5)


def test_sinusoidal_embedding_rescales_t_by_max_t():
    t = torch.arange(0, 50, 7)
    assert torch.allclose(SinusoidalTimeEmbedding(32, 50)(t), SinusoidalTimeEmbedding(32, 1000)(t * 20), atol=1e-5)
    at_zero = SinusoidalTimeEmbedding(8, 50)(torch.zeros(1, dtype=torch.long))
    assert torch.equal(at_zero, torch.tensor([[0.0, 0, 0, 0, 1, 1, 1, 1]]))


# ---------------------------------------------------------------------------------------- measurement, interface


@pytest.mark.parametrize("name", [*PRESETS, "toy-mlp-6x128"])
def test_flops_formula(name):
    cfg = zoo.config(name)
    dims = [3 + 32, *cfg.hidden, 3]
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    assert zoo.flops(name) == flops(cfg) == 2 * macs
    assert zoo.flops(name, time_embed="learned") == 2 * (macs + 32 + 32 * 32)
    known = {"toy-mlp-1x64": 4_864, "toy-mlp-2x64": 13_056, "toy-mlp-64-128-128": 54_400}
    assert known.get(name, 2 * macs) == 2 * macs


def test_param_groups_and_summary_fields():
    model = build_model(ToyMLPConfig(time_embed="learned"))
    groups = model.param_groups(1e-3, 0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(g["lr"] == 1e-3 for g in groups)
    assert all(p.dim() == 2 for p in groups[0]["params"]) and all(p.dim() == 1 for p in groups[1]["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    torch.optim.AdamW(groups)  # accepted as-is
    assert model.summary_fields() == {"depth": 3, "widths": "64-128-128"}
    assert zoo.describe("toy-mlp-2x64")["widths"] == "64-64"


def test_trains_with_the_ddpm_loss_and_samples():
    torch.manual_seed(2)
    ddpm = DDPM(10, "linear", 1e-4, 0.2)
    model = zoo.build("toy-mlp-1x64", max_t=ddpm.T)
    loss = ddpm.loss(model, torch.randn(32, 3), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    x, traj = ddpm.sample(model, 4, (3,), generator=torch.Generator().manual_seed(1), return_trajectory=True)
    assert x.shape == (4, 3) and len(traj) == 10 and torch.isfinite(x).all()
