"""`harness compare`: pairing, intervals and verdicts on made-up trial values (no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.reporting.compare import compare_arms, markdown


def frame(values: dict[str, list[float]], contexts=("a", "b")) -> pd.DataFrame:
    rows = []
    for arm, vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"arm": arm, "context": (("dataset", contexts[i % len(contexts)]),), "seed": i // 2,
                         "value": v, "diagnostic": False})
    return pd.DataFrame(rows)


def test_a_consistent_paired_improvement_is_better_with_an_interval_excluding_zero():
    rng = np.random.default_rng(0)
    base = list(50 + 10 * rng.standard_normal(8))  # large spread between contexts and seeds
    arm = [b - 2 + 0.1 * rng.standard_normal() for b in base]  # but 2 lower in every pair
    res = compare_arms(frame({"D8": base, "D2S8I": arm}), "D8", higher_better=False).set_index("arm")
    r = res.loc["D2S8I"]
    assert r.pairs == 8 and r["diff"] == pytest.approx(-2, abs=0.1)
    assert r.ci_high < 0 and r.p_paired_t < 1e-6 and r.vs_baseline == "better"
    assert res.loc["D8"].vs_baseline == "baseline"
    # unpaired, the spread would hide it: the arms' std is far larger than the difference
    assert res.loc["D8", "std"] > 5
    assert compare_arms(frame({"D8": base, "D2S8I": arm}), "D8", higher_better=True).set_index("arm").loc[
        "D2S8I"].vs_baseline == "worse"


def test_noise_is_within_noise_and_one_pair_is_undecided():
    rng = np.random.default_rng(1)
    base = list(rng.standard_normal(6))
    noisy = list(rng.standard_normal(6))
    r = compare_arms(frame({"x": base, "y": noisy}), "x", False).set_index("arm").loc["y"]
    assert r.ci_low < 0 < r.ci_high and r.vs_baseline == "within noise"
    single = compare_arms(frame({"x": [1.0], "y": [0.5]}), "x", False).set_index("arm").loc["y"]
    assert single.pairs == 1 and single["diff"] == -0.5 and single.vs_baseline == "undecided (1 pair: add seeds)"
    unpaired = frame({"x": [1.0], "y": [0.5]}, contexts=("a",))
    unpaired.loc[unpaired.arm == "y", "context"] = [(("dataset", "other"),)]
    assert compare_arms(unpaired, "x", False).set_index("arm").loc["y"].vs_baseline == "undecided (no paired trial)"


def test_markdown_has_a_row_per_arm_and_the_caption():
    res = compare_arms(frame({"x": [1.0, 2.0], "y": [0.0, 1.5]}), "x", False)
    text = markdown(res, "caption here")
    assert text.startswith("caption here") and text.count("\n| ") == 3  # header + 2 arms
    assert "| x | 2 | 1.5 ± 0.7071 | – | – | – | – | baseline |" in text


def test_pareto_front_keeps_exactly_the_undominated_points():
    from harness.reporting.pareto import pareto_mask

    cost = np.array([1, 2, 3, 4, 5, 2, np.nan])
    quality = np.array([5, 3, 4, 1, 1, 3, 0])  # (2, 3) twice: ties dominate neither; NaN is never on the front
    assert pareto_mask(cost, quality, higher_better=False).tolist() == [True, True, False, True, False, True, False]
    assert pareto_mask(cost, quality, higher_better=True).tolist() == [True, False, False, False, False, False, False]


def test_a_margin_asks_for_equivalence_by_two_one_sided_tests():
    base = [10.0, 12.0, 11.0, 13.0, 10.5, 12.5]
    arm = [b + d for b, d in zip(base, [0.1, -0.1, 0.05, -0.05, 0.1, -0.08])]  # the same in every pair, nearly
    r = compare_arms(frame({"x": base, "y": arm}), "x", False, margin=0.5).set_index("arm").loc["y"]
    assert r.vs_baseline == "equivalent" and r.p_equivalence < 0.05
    r = compare_arms(frame({"x": base, "y": arm}), "x", False, margin=0.01).set_index("arm").loc["y"]
    assert r.vs_baseline == "within noise"  # a margin inside the noise is not shown
