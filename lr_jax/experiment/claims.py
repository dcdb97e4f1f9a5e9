"""The paper's observations (sections 1 and 5.2) as checks on a sweep's per-seed rows.

Each check returns numbers, not only a verdict, so that a report can say how
strongly a claim held. Inputs are the rows of :func:`lr_jax.experiment.sweep.collect_runs`
(one per job, epoch and category). Pure functions.

The claims:

1. the local bounds around all four categories first decrease over the first
   epochs, then increase (``dip_then_rise`` on ``mean_bound`` / ``mean_log2_bound``);
2. the distance to the nearest boundary follows the opposite trend
   (``rise_then_dip`` on ``mean_single_region_radius``);
3. the trend is clearer on train and test points than on random points
   (the size of the dip relative to the start, per category);
4. spheres centred at training points contain more linear regions than those
   at random points (train vs random1/random2 at every epoch);
5. the number of points with a single region grows with training until
   convergence (``num_single_region`` at the end vs epoch 0, and its rank
   correlation with the epoch).

:func:`check_claims` describes them (means over seeds); :func:`claim_intervals`
tests them (:mod:`lr_jax.experiment.claim_statistics`: one-sided p-values,
95 % intervals, raw verdicts and Holm / Benjamini-Hochberg verdicts within
each claim's family over lr x depth x category). Claim 3's test compares the
relative *mean* fall after epoch 0 (per seed), the descriptive table the
fall to the mean trajectory's minimum.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from lr_jax.experiment import claim_statistics as cs
from lr_jax.experiment.experiment import CATEGORIES


def _trajectories(rows, lr, depth, category, metric) -> tuple[np.ndarray, np.ndarray]:
    """``epochs [E]`` and values ``[S, E]`` (one row per seed) of one metric."""
    seeds = sorted({r["seed"] for r in rows if r["lr"] == lr and r["depth"] == depth})
    epochs = sorted({r["epoch"] for r in rows if r["lr"] == lr and r["depth"] == depth})
    table = {(r["seed"], r["epoch"]): r[metric] for r in rows
             if r["lr"] == lr and r["depth"] == depth and r["category"] == category}
    values = np.array([[table.get((s, e), np.nan) for e in epochs] for s in seeds], dtype=np.float64)
    return np.asarray(epochs), values


def dip_then_rise(epochs: np.ndarray, values: np.ndarray) -> dict:
    """Does the seed-mean trajectory fall to an interior minimum and rise again?

    Returns the mean trajectory's start, minimum, end, the epoch of the
    minimum, and per seed whether its own minimum is interior with a fall and a
    rise (``seeds_dip_then_rise`` out of ``n_seeds``).
    """
    mean = np.nanmean(values, axis=0)
    i = int(np.nanargmin(mean))
    per_seed = [
        0 < int(np.nanargmin(v)) < len(v) - 1 and v[0] > np.nanmin(v) < v[-1] for v in values
    ]
    return {
        "start": float(mean[0]),
        "min": float(mean[i]),
        "end": float(mean[-1]),
        "end_epoch": int(epochs[-1]),
        "argmin_epoch": int(epochs[i]),
        "holds_on_mean": bool(0 < i < len(mean) - 1 and mean[0] > mean[i] < mean[-1]),
        "seeds_dip_then_rise": int(sum(per_seed)),
        "n_seeds": int(values.shape[0]),
        "relative_dip": float((mean[0] - mean[i]) / mean[0]) if mean[0] else 0.0,
        "relative_rise": float((mean[-1] - mean[i]) / mean[i]) if mean[i] else 0.0,
    }


def rise_then_dip(epochs: np.ndarray, values: np.ndarray) -> dict:
    """The mirror of :func:`dip_then_rise` (for distances)."""
    out = dip_then_rise(epochs, -values)
    return {
        "start": -out["start"],
        "max": -out["min"],
        "end": -out["end"],
        "end_epoch": out["end_epoch"],
        "argmax_epoch": out["argmin_epoch"],
        "holds_on_mean": out["holds_on_mean"],
        "seeds_rise_then_dip": out["seeds_dip_then_rise"],
        "n_seeds": out["n_seeds"],
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def check_claims(rows: Sequence[dict]) -> list[dict]:
    """All five claims for every (lr, depth) of the sweep; one dict per claim and setting."""
    present = {k for r in rows for k in r}
    needed = {"mean_log2_bound", "mean_bound", "mean_single_region_radius", "num_single_region"}
    if not needed <= present:
        return [{"claim": None, "skipped": f"rows lack {sorted(needed - present)}"}]
    out = []
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        for depth in sorted({r["depth"] for r in rows}):
            setting = {"lr": lr, "depth": depth}
            dips = {}
            for cat in CATEGORIES:
                epochs, bound = _trajectories(rows, lr, depth, cat, "mean_log2_bound")
                _, mean_bound = _trajectories(rows, lr, depth, cat, "mean_bound")
                _, radius = _trajectories(rows, lr, depth, cat, "mean_single_region_radius")
                _, single = _trajectories(rows, lr, depth, cat, "num_single_region")
                dips[cat] = dip_then_rise(epochs, bound)
                out.append({**setting, "claim": 1, "category": cat, "metric": "mean_log2_bound", **dips[cat]})
                out.append({**setting, "claim": 1, "category": cat, "metric": "mean_bound", **dip_then_rise(epochs, mean_bound)})
                out.append({**setting, "claim": 2, "category": cat, "metric": "mean_single_region_radius", **rise_then_dip(epochs, radius)})
                m = np.nanmean(single, axis=0)
                out.append({
                    **setting, "claim": 5, "category": cat, "metric": "num_single_region",
                    "start": float(m[0]), "end": float(m[-1]), "end_epoch": int(epochs[-1]), "max": float(np.max(m)),
                    "spearman_with_epoch": _spearman(epochs, m),
                    "seeds_end_above_start": int(np.sum(single[:, -1] > single[:, 0])),
                    "n_seeds": int(single.shape[0]),
                })
            out.append({
                **setting, "claim": 3, "metric": "relative_dip of mean C",
                **{f"{c}_relative_dip": dips[c]["relative_dip"] for c in CATEGORIES},
                **{f"{c}_seeds_dip_then_rise": dips[c]["seeds_dip_then_rise"] for c in CATEGORIES},
            })
            _, train = _trajectories(rows, lr, depth, "train", "mean_log2_bound")
            for cat in CATEGORIES[2:]:  # the random categories
                _, other = _trajectories(rows, lr, depth, cat, "mean_log2_bound")
                out.append({
                    **setting, "claim": 4, "category": cat, "metric": "mean_log2_bound",
                    "train_minus_random_mean": float(np.nanmean(train - other)),
                    "cells_train_above": int(np.sum(train > other)),
                    "cells": int(np.sum(~np.isnan(train - other))),
                })
    return out


def claims_markdown(claims: Sequence[dict]) -> str:
    """Markdown tables of :func:`check_claims`'s output, one per claim."""
    if claims and claims[0].get("claim") is None:
        return f"Claims not checked: {claims[0].get('skipped')}\n"
    out = []
    last = _last_epoch_label(claims)

    def table(title, header, rows):
        out.extend([f"### {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)])
        out.extend("| " + " | ".join(str(v) for v in r) + " |" for r in rows)
        out.append("")

    c1 = [c for c in claims if c["claim"] == 1 and c["metric"] == "mean_log2_bound"]
    table(
        "1. mean C first decreases, then increases",
        ["lr", "depth", "category", "epoch 0", "minimum (epoch)", last, "seeds with an interior minimum"],
        [(c["lr"], c["depth"], c["category"], f"{c['start']:.2f}", f"{c['min']:.2f} ({c['argmin_epoch']})",
          f"{c['end']:.2f}", f"{c['seeds_dip_then_rise']}/{c['n_seeds']}") for c in c1],
    )
    c2 = [c for c in claims if c["claim"] == 2]
    table(
        "2. single-region radius first increases, then decreases",
        ["lr", "depth", "category", "epoch 0", "maximum (epoch)", last, "seeds rising then falling"],
        [(c["lr"], c["depth"], c["category"], f"{c['start']:.3f}", f"{c['max']:.3f} ({c['argmax_epoch']})",
          f"{c['end']:.3f}", f"{c['seeds_rise_then_dip']}/{c['n_seeds']}") for c in c2],
    )
    c3 = [c for c in claims if c["claim"] == 3]
    table(
        "3. relative fall of mean C to its minimum, per category",
        ["lr", "depth", *CATEGORIES],
        [(c["lr"], c["depth"], *(f"{100 * c[f'{k}_relative_dip']:.1f} %" for k in CATEGORIES)) for c in c3],
    )
    c4 = [c for c in claims if c["claim"] == 4]
    table(
        "4. mean C around train points minus around random points",
        ["lr", "depth", "random category", "mean difference", "(seed, epoch) cells with train above"],
        [(c["lr"], c["depth"], c["category"], f"{c['train_minus_random_mean']:+.2f}", f"{c['cells_train_above']}/{c['cells']}") for c in c4],
    )
    c5 = [c for c in claims if c["claim"] == 5]
    table(
        "5. points with a single region (C = 0)",
        ["lr", "depth", "category", "epoch 0", last, "rank correlation with epoch", "seeds ending above start"],
        [(c["lr"], c["depth"], c["category"], f"{c['start']:.1f}", f"{c['end']:.1f}", f"{c['spearman_with_epoch']:.2f}",
          f"{c['seeds_end_above_start']}/{c['n_seeds']}") for c in c5],
    )
    return "\n".join(out)


def _last_epoch_label(claims: Sequence[dict]) -> str:
    """Heading of the last-epoch column: the sweep's actual last epoch."""
    ends = sorted({c["end_epoch"] for c in claims if "end_epoch" in c})
    if len(ends) == 1:
        return f"epoch {ends[0]}"
    return "last epoch" if not ends else f"last epoch ({', '.join(map(str, ends))})"


# ---------------------------------------------------------------------------
# Verdicts with seed-level confidence intervals


def _interval_row(setting: dict, claim: int, test: str, category: str, metric: str, e: cs.Estimate) -> dict:
    return {**setting, "claim": claim, "test": test, "category": category, "metric": metric, **e._asdict()}


def family(row: dict) -> str:
    """The family of tests a claim-test row is corrected within (over lr x depth x category).

    Each half of claims 1 and 2 and claim 5 is a family (its test name);
    claim 3's data-minus-random comparisons form one, as do claim 4's.
    """
    if row["claim"] == 3:
        return "3: relative mean fall, data minus random"
    if row["claim"] == 4:
        return "4: train minus random"
    return f"{row['claim']}: {row['test']}"


def with_corrections(rows: Sequence[dict], alpha: float = cs.ALPHA) -> list[dict]:
    """``rows`` with Holm and Benjamini-Hochberg adjusted p-values and verdicts, per family.

    A family is one :func:`family` of one ``measure`` (and one ``setting``
    when the rows carry it): the claim's tests over every lr, depth and
    category of the sweep. Adds ``family``, ``p_holm``, ``held_holm``
    (family-wise error at ``alpha``), ``p_bh`` and ``held_bh``
    (false-discovery rate at ``alpha``).
    """
    out = [dict(r, family=family(r)) for r in rows]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(out):
        groups.setdefault((r.get("setting"), r.get("measure"), r["family"]), []).append(i)
    for idx in groups.values():
        p = [out[i]["p_value"] for i in idx]
        for i, h, b in zip(idx, cs.holm(p), cs.benjamini_hochberg(p)):
            out[i].update(p_holm=float(h), held_holm=bool(h <= alpha), p_bh=float(b), held_bh=bool(b <= alpha))
    return out


# The local-complexity measures claims 1, 3, 4 and 5 can be judged on, and the matching
# single-region count of claim 5: Algorithm 1's C on every point, the exact count on the
# counted subset (bound=sandwich), and C on that same subset (to tell a subset effect apart).
SINGLE_REGION_METRIC = {
    "mean_log2_bound": "num_single_region",
    "exact_mean_log2_count": "exact_num_single_region",
    "exact_subset_mean_log2_bound": "exact_subset_num_single_region",
}
MEASURE_NAMES = {
    "mean_log2_bound": "bound C, all points",
    "exact_subset_mean_log2_bound": "bound C, counted subset",
    "exact_mean_log2_count": "exact count (log2), counted subset",
}


def claim_intervals(rows: Sequence[dict], metric: str = "mean_log2_bound", *, seed: int = 0) -> list[dict]:
    """Each claim as a calibrated test with its 95 % interval (:mod:`claim_statistics`).

    A test holds for a (lr, depth, category) when its one-sided p-value is
    at most 0.025 (then its interval excludes zero in the claimed
    direction; :mod:`claim_statistics`); beside that raw verdict each row carries the Holm and
    Benjamini-Hochberg verdicts within the claim's family
    (:func:`with_corrections`). ``metric`` is the local-complexity measure judged
    in claims 1, 3 and 4: ``mean_log2_bound`` (mean ``C``), or
    ``exact_mean_log2_count`` (mean log2 of the exact count on the counted
    subset) or ``exact_subset_mean_log2_bound`` (mean ``C`` on that subset)
    when the rows carry them; claim 5 reads the matching number of balls
    meeting a single region (:data:`SINGLE_REGION_METRIC`), and claim 2
    (``mean_single_region_radius``) is judged with ``mean_log2_bound`` only.

    Returns:
      One dict per (lr, depth, claim, test, category) with the
      :class:`~lr_jax.experiment.claim_statistics.Estimate` fields, the
      ``metric`` the test reads, the ``measure`` judged (the argument) and
      the corrections; empty when the rows lack ``metric``. ``seed`` keys
      the within-seed permutations (claims 1 and 2).
    """
    out = [_interval_row(t.setting, t.claim, t.test, t.category, t.metric, t.run(seed=seed))
           for t in claim_tests(rows, metric)]
    return with_corrections([{**r, "measure": metric} for r in out])


class ClaimTest(NamedTuple):
    """One claim test of one (lr, depth): what it reads and how it is computed.

    Attributes:
      setting: ``{"lr", "depth"}``.
      claim: 1-5.
      test: its name in the tables.
      category: the category (claims 3 and 4: the data category).
      metric: the metric read.
      arrays: the ``[S, E]`` trajectories the test reads (same seeds).
      fn: ``fn(*arrays, seed=...) -> Estimate``.
    """

    setting: dict
    claim: int
    test: str
    category: str
    metric: str
    arrays: tuple
    fn: Callable

    def run(self, seed: int = 0, **kwargs) -> cs.Estimate:
        return self.fn(*self.arrays, seed=seed, **kwargs)


def _first(f):
    return lambda *a, **k: f(*a, **k)[0]


def _second(f):
    return lambda *a, **k: f(*a, **k)[1]


def claim_tests(rows: Sequence[dict], metric: str = "mean_log2_bound") -> list[ClaimTest]:
    """Every claim test of :func:`claim_intervals`, not yet computed (empty when the rows lack ``metric``)."""
    if not any(metric in r and r[metric] is not None for r in rows):
        return []
    out = []
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        for depth in sorted({r["depth"] for r in rows}):
            setting = {"lr": lr, "depth": depth}

            def traj(cat, m):
                return _trajectories(rows, lr, depth, cat, m)[1]

            for cat in CATEGORIES:
                v = (traj(cat, metric),)
                out.append(ClaimTest(setting, 1, "drop to the minimum", cat, metric, v, _first(cs.dip_then_rise)))
                out.append(ClaimTest(setting, 1, "rise after the minimum", cat, metric, v, _second(cs.dip_then_rise)))
                if metric == "mean_log2_bound":
                    r = (traj(cat, "mean_single_region_radius"),)
                    m = "mean_single_region_radius"
                    out.append(ClaimTest(setting, 2, "rise to the maximum", cat, m, r, _first(cs.rise_then_dip)))
                    out.append(ClaimTest(setting, 2, "fall after the maximum", cat, m, r, _second(cs.rise_then_dip)))
                single = SINGLE_REGION_METRIC.get(metric)
                if single is not None:
                    out.append(ClaimTest(setting, 5, "growth, first to last epoch", cat, single, (traj(cat, single),),
                                         cs.growth))
            for clear in CATEGORIES[:2]:
                for random in CATEGORIES[2:]:
                    out.append(ClaimTest(setting, 3, f"relative mean fall, {clear} minus {random}", clear, metric,
                                         (traj(clear, metric), traj(random, metric)), cs.clearer_trend))
            for random in CATEGORIES[2:]:
                out.append(ClaimTest(setting, 4, f"train minus {random}", "train", metric,
                                     (traj("train", metric), traj(random, metric)), cs.paired_difference))
    return out


def verdict_stability(rows: Sequence[dict], metric: str = "mean_log2_bound", keys: Sequence[int] = range(5)) -> dict:
    """How many verdicts change when the permutations are drawn with another key.

    Recomputes :func:`claim_intervals` with every key in ``keys`` (only the
    within-seed permutation tests of claims 1 and 2 use one; the sign-flip
    tests are exact up to 16 seeds) and counts the tests whose raw, Holm or
    Benjamini-Hochberg verdict is not the same under every key.

    Returns:
      ``{"tests", "keys", "raw", "holm", "bh", "max_p_spread"}``: the
      number of tests, the keys, the changed verdicts of each kind, and the
      largest range of one test's p-value over the keys.
    """
    runs = [claim_intervals(rows, metric, seed=k) for k in keys]
    if not runs or not runs[0]:
        return {"tests": 0, "keys": list(keys), "raw": 0, "holm": 0, "bh": 0, "max_p_spread": 0.0}
    out = {"tests": len(runs[0]), "keys": list(keys)}
    for name, field in (("raw", "held"), ("holm", "held_holm"), ("bh", "held_bh")):
        out[name] = sum(len({run[i][field] for run in runs}) > 1 for i in range(len(runs[0])))
    spreads = np.array([np.ptp([run[i]["p_value"] for run in runs]) for i in range(len(runs[0]))])
    # An undefined test (too few seeds) has NaN p-values under every key: no spread to report.
    defined = spreads[np.isfinite(spreads)]
    out["max_p_spread"] = float(defined.max()) if defined.size else 0.0
    return out


def intervals_markdown(intervals: Sequence[dict], title: str) -> str:
    """One table: every claim's test per (lr, depth), with its estimate, 95 % interval, p-value and
    verdicts (raw, Holm, Benjamini-Hochberg within the claim's family), then the counts per family."""
    if not intervals:
        return ""
    head = ["claim", "lr", "depth", "test", "category", "metric", "estimate [95 % CI]", "one-sided p",
            "raw", "Holm", "BH"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def verdict(h):
        return "held" if h else "not held"

    for r in sorted(intervals, key=lambda r: (r["claim"], -r["lr"], r["depth"])):
        ci = cs.interval_text(r["mean"], r["low"], r["high"])
        lines.append(f"| {r['claim']} | {r['lr']} | {r['depth']} | {r['test']} | {r['category']} | {r['metric']} | "
                     f"{ci} | {cs.p_text(r['p_value']).removeprefix('p=').removeprefix('p')} | {verdict(r['held'])} ({r['n_seeds']} seeds) | "
                     f"{verdict(r['held_holm'])} | {verdict(r['held_bh'])} |")
    lines += ["", "Tests held per family (raw / Holm / Benjamini-Hochberg, each at one-sided 0.025):", "",
              "| family | tests | raw | Holm | BH |", "| --- | --- | --- | --- | --- |"]
    for fam in dict.fromkeys(r["family"] for r in sorted(intervals, key=lambda r: r["claim"])):
        rows = [r for r in intervals if r["family"] == fam]
        lines.append(f"| {fam} | {len(rows)} | {sum(r['held'] for r in rows)} | {sum(r['held_holm'] for r in rows)} | "
                     f"{sum(r['held_bh'] for r in rows)} |")
    lines.append("")
    return "\n".join(lines)


def agreement_markdown(intervals: Sequence[dict], measures: Sequence[str] = tuple(MEASURE_NAMES),
                       reference: str = "exact_mean_log2_count") -> str:
    """Where the verdicts on the bound and on the exact counts agree: one row per claim test and setting.

    Args:
      intervals: :func:`claim_intervals` rows of several ``measures`` together.
      measures: the ``measure`` values shown, as columns.
      reference: the measure the others are compared with (the exact counts).

    Returns:
      A markdown table with each measure's mean, interval and verdict, and per
      other measure whether its verdict is the reference's, then how many
      agree, split into "both held" and "both not held" (agreement on tests
      that hold on neither is no evidence that the measures move alike);
      empty when the reference or every other measure is absent.
      Comparing the bound on the counted subset with the exact count on it
      separates what the bound changes from what the smaller sample changes.
    """
    cells: dict[tuple, dict] = {}
    for r in intervals:
        measure = r["measure"]
        if measure not in measures or r["claim"] == 2:
            continue
        cells.setdefault((r["claim"], r["lr"], r["depth"], r["test"], r["category"]), {})[measure] = r
    present = [m for m in measures if any(m in c for c in cells.values())]
    others = [m for m in present if m != reference]
    if reference not in present or not others:
        return ""
    name = {m: MEASURE_NAMES.get(m, m) for m in present}
    head = ["claim", "lr", "depth", "test", "category", *(name[m] for m in present),
            *(f"exact agrees with {name[m]}" for m in others)]
    lines = ["### Verdicts on the bound and on the exact counts", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    agree = {m: [0, 0, 0] for m in others}  # agreeing, compared, both held
    for key in sorted(cells, key=lambda k: (k[0], -k[1], k[2], k[3])):
        row = cells[key]
        shown = []
        for m in present:
            e = row.get(m)
            shown.append("" if e is None else
                         f"{'held' if e['held'] else 'not held'}: {cs.interval_text(e['mean'], e['low'], e['high'])}")
        verdicts = []
        for m in others:
            if m not in row or reference not in row:
                verdicts.append("")
                continue
            same = row[m]["held"] == row[reference]["held"]
            agree[m][0] += same
            agree[m][1] += 1
            agree[m][2] += same and row[m]["held"]
            verdicts.append("yes" if same else "**no**")
        lines.append("| " + " | ".join(str(v) for v in (*key, *shown, *verdicts)) + " |")
    lines.append("")
    lines += [f"The exact counts' verdict equals that of {name[m]} in {a} of {n} tests ({h} both held, "
              f"{a - h} both not held)." for m, (a, n, h) in agree.items()]
    lines.append("")
    return "\n".join(lines)
