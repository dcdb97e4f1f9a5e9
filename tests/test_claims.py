"""The paper's claims checked on synthetic sweep rows with known trends."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lr_jax.experiment.claims import check_claims, claims_markdown
from lr_jax.experiment.experiment import CATEGORIES

EPOCHS = (0, 3, 6)


def _rows(values):
    """Two seeds of (lr 0.02, depth 2); mean C per (category, epoch) from ``values``."""
    rows = []
    for seed in (0, 1):
        for cat in CATEGORIES:
            for i, e in enumerate(EPOCHS):
                c = values[cat][i]
                rows.append({
                    "lr": 0.02, "depth": 2, "seed": seed, "epoch": e, "category": cat,
                    "mean_log2_bound": c, "mean_bound": 2.0**c, "mean_single_region_radius": 1.0 / (1 + c),
                    "num_single_region": 10 * e,
                })
    return rows


def test_claims_on_a_dip_then_rise():
    values = {"train": (4.0, 2.0, 3.0), "test": (4.0, 2.0, 3.0), "random1": (2.0, 1.5, 1.8), "random2": (1.0, 1.0, 1.0)}
    claims = check_claims(_rows(values))
    c1 = {c["category"]: c for c in claims if c["claim"] == 1 and c["metric"] == "mean_log2_bound"}
    assert c1["train"]["holds_on_mean"] and c1["train"]["argmin_epoch"] == 3 and c1["train"]["seeds_dip_then_rise"] == 2
    assert c1["train"]["relative_dip"] == 0.5 and c1["train"]["end_epoch"] == 6
    assert not c1["random2"]["holds_on_mean"]
    c2 = {c["category"]: c for c in claims if c["claim"] == 2}
    assert c2["train"]["holds_on_mean"] and c2["train"]["argmax_epoch"] == 3
    c4 = {c["category"]: c for c in claims if c["claim"] == 4}
    assert c4["random2"]["cells_train_above"] == 6 and c4["random2"]["train_minus_random_mean"] == 2.0
    c5 = [c for c in claims if c["claim"] == 5]
    assert all(c["spearman_with_epoch"] == 1.0 and c["end"] == 60 for c in c5)


def test_markdown_names_the_actual_last_epoch():
    md = claims_markdown(check_claims(_rows({c: (1.0, 0.5, 2.0) for c in CATEGORIES})))
    assert "epoch 6" in md and "epoch 20" not in md
    assert "| 0.02 | 2 | train | 1.00 | 0.50 (3) | 2.00 | 2/2 |" in md


def test_missing_metrics_are_reported_not_checked():
    claims = check_claims([{"lr": 0.02, "depth": 2, "seed": 0, "epoch": 0, "category": "train"}])
    assert claims[0]["claim"] is None and "mean_bound" in claims[0]["skipped"]
    assert claims_markdown(claims).startswith("Claims not checked")


def test_claim_intervals_on_known_trajectories():
    """Planted effects are held with intervals; a category with none is not."""
    from lr_jax.experiment.claims import claim_intervals, intervals_markdown

    rng = np.random.default_rng(0)
    epochs = range(0, 11, 2)
    rows = []
    for seed in range(8):
        for e in epochs:
            for cat, base in (("train", 3.0), ("test", 3.0), ("random1", 2.0), ("random2", 1.0)):
                u = (e - 5) ** 2 / 25.0  # falls to epochs 4-6, rises back by epoch 10
                c = base + (0.5 * u if cat in ("train", "test") else 0.0) + 0.02 * rng.normal()
                rows.append({"lr": 0.02, "depth": 2, "seed": seed, "epoch": e, "category": cat,
                             "mean_log2_bound": c, "mean_single_region_radius": 1.0 / c,
                             "num_single_region": 10 + e + rng.normal()})
    out = claim_intervals(rows)
    held = {(r["claim"], r["test"], r["category"]): r["held"] for r in out}
    assert held[(1, "drop to the minimum", "train")] and held[(1, "rise after the minimum", "train")]
    assert not held[(1, "drop to the minimum", "random2")]  # flat: no effect
    assert held[(4, "train minus random1", "train")]
    assert held[(5, "growth, first to last epoch", "train")]
    assert held[(3, "relative mean fall, train minus random2", "train")]
    assert "| 1 | 0.02 | 2 | drop to the minimum | train |" in intervals_markdown(out, "t")
    assert claim_intervals(rows, "exact_mean_log2_count") == []


def _planted_rows(exact_effect: bool, seeds=range(8)):
    """Bound falls then rises on train/test; the exact count does too only with ``exact_effect``."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in seeds:
        for e in range(0, 11, 2):
            for cat, base in (("train", 3.0), ("test", 3.0), ("random1", 2.0), ("random2", 1.0)):
                u = (e - 5) ** 2 / 25.0 if cat in ("train", "test") else 0.0
                c = base + 0.5 * u + 0.02 * rng.normal()
                x = base - 1 + (0.5 * u if exact_effect else 0.0) + 0.02 * rng.normal()
                rows.append({"lr": 0.02, "depth": 2, "seed": seed, "epoch": e, "category": cat,
                             "mean_log2_bound": c, "mean_single_region_radius": 1.0 / c, "num_single_region": 10 + e,
                             "exact_mean_log2_count": x, "exact_num_single_region": 5 + (e if exact_effect else 0),
                             "exact_subset_mean_log2_bound": c, "exact_subset_num_single_region": 5 + e})
    return rows


def test_exact_count_verdicts_and_their_agreement_with_the_bound():
    from lr_jax.experiment.claims import agreement_markdown, claim_intervals

    for effect in (True, False):
        rows = _planted_rows(effect)
        exact = claim_intervals(rows, "exact_mean_log2_count")
        held = {(r["claim"], r["test"], r["category"]): r["held"] for r in exact}
        assert held[(1, "drop to the minimum", "train")] is effect
        assert held[(5, "growth, first to last epoch", "train")] is effect
        assert {r["metric"] for r in exact if r["claim"] == 5} == {"exact_num_single_region"}
        assert not any(r["claim"] == 2 for r in exact)  # the distance is judged once, on the bound's rows
        assert all(r["measure"] == "exact_mean_log2_count" for r in exact)
        both = claim_intervals(rows) + exact + claim_intervals(rows, "exact_subset_mean_log2_bound")
        md = agreement_markdown(both)
        line = next(l for l in md.splitlines() if l.startswith("| 1 | 0.02 | 2 | drop to the minimum | train |"))
        # The bound (all points, and the subset: identical rows here) falls; the exact count only with an effect.
        assert line.endswith("| yes | yes |") is effect and line.endswith("| **no** | **no** |") is not effect
        # The agreement count is split into both held and both not held, and the parts add up.
        for m in ("bound C, all points", "bound C, counted subset"):
            tail = next(l for l in md.splitlines() if l.startswith(f"The exact counts' verdict equals that of {m} in "))
            agreeing, compared, held_both, not_both = map(int, re.findall(r"\d+", tail.split(" in ", 1)[1]))
            assert held_both + not_both == agreeing <= compared
            cells = [l for l in md.splitlines() if l.startswith("| ") and l.count("held:") == 3]
            assert held_both == sum(l.count("| held:") == 3 for l in cells)  # all three measures held (identical bound rows)
    assert agreement_markdown(claim_intervals(rows)) == ""  # no exact counts: nothing to compare


def test_corrections_are_per_claim_family():
    from lr_jax.experiment.claims import with_corrections

    def row(claim, test, p, measure="m"):
        return {"claim": claim, "test": test, "p_value": p, "measure": measure}

    rows = [row(1, "drop to the minimum", p) for p in (0.001, 0.02, 0.3)]
    rows += [row(1, "rise after the minimum", 0.02)]  # its own family: alone, Holm changes nothing
    rows += [row(3, f"relative mean fall, train minus {r}", 0.01) for r in ("random1", "random2")]
    rows += [row(1, "drop to the minimum", 0.02, measure="other")]  # another measure: another family
    out = with_corrections(rows)
    assert [r["held"] if "held" in r else None for r in out] == [None] * 7  # raw verdicts are left as they were
    assert [r["p_holm"] for r in out[:3]] == pytest.approx([0.003, 0.04, 0.3])  # 3p, 2p, 1p, running max
    assert [r["held_holm"] for r in out[:3]] == [True, False, False]
    assert [r["p_bh"] for r in out[:3]] == pytest.approx([0.003, 0.03, 0.3])  # 3p/1, 3p/2, 3p/3
    assert out[3]["held_holm"] and out[3]["p_holm"] == pytest.approx(0.02)
    assert {r["family"] for r in out[4:6]} == {"3: relative mean fall, data minus random"}
    assert [r["p_holm"] for r in out[4:6]] == pytest.approx([0.02, 0.02])
    assert out[6]["p_holm"] == pytest.approx(0.02)
