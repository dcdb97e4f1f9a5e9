"""Figures and phase tests of the grokking study (``scripts/grokking_report.py``; docs/grokking.md).

The hypotheses (Humayun, Balestriero and Baraniuk 2023/2024), each judged per
measure (``frame``: the sampled proxy; ``tight`` and ``paper``: certified
unstable neurons) and radius on a run's per-seed trajectories ``[S, E]``
with the calibrated tests of :mod:`lr_jax.experiment.claim_statistics`.
The windows are fixed by a rule set before any run: ``t_fit``, the first
evaluated step at which the seeds' mean training accuracy reaches 0.99,
splits the run into an early window (steps ``<= t_fit``) and a late one
(steps ``>= t_fit``).

* H1, three phases around training points: a within-seed permutation test
  of :func:`three_phases` on the whole run (the turning points recomputed on
  every permutation, so no window is chosen from the data); its false-held
  rate and power come from :func:`simulate_three_phases`. ``H1w``: the
  windowed version, a fall and a rise before ``t_fit``
  (:func:`~lr_jax.experiment.claim_statistics.dip_then_rise`) and a fall from
  the late maximum to the end after it (``rise_then_dip``'s fall).
* H2, migration: after ``t_fit``, the fall around training points (as in
  ``H1w``) and a rise from the minimum to the end around decision-boundary
  points (``dip_then_rise``'s rise); held when both are. ``H2r``: per seed,
  the change from ``t_fit`` to the end of ``log((boundary + 1) / (train +
  1))``, sign-flip test over seeds.
* H3, timing: per seed, ``log10`` of the step at which the late fall of
  training-point LC is half done minus ``log10`` of the step at which test
  accuracy is half way from its start to its end; a sign-flip interval over
  seeds. "Coincides" when the 95 % interval lies within +-0.5 decades.
* H4, proxy against certified: the verdicts side by side, and per seed the
  Spearman correlation of the proxy's and each certified measure's
  trajectory (sign-flip interval of the mean).

Every within-seed permutation test is exact under exchangeable values within
a seed; Holm's correction runs over each hypothesis's family (measures x
radii x parts) per ``alpha``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from lr_jax.experiment import claim_statistics as cs  # noqa: E402
from lr_jax.experiment.experiment import run_seeds  # noqa: E402
from lr_jax.experiment.grokking import CATEGORIES, eval_steps  # noqa: E402
from lr_jax.experiment.run_files import RunFileError, atomic_write, json_safe, read_json, read_yaml  # noqa: E402
from lr_jax.experiment.run_records import records_up_to  # noqa: E402

MEASURES = ("frame", "tight", "paper")
MEASURE_LABELS = {"frame": "proxy (crossed neurons)", "tight": "tight (certified unstable)", "paper": "paper C (certified unstable)"}
COLOURS = {"train": "tab:blue", "test": "tab:orange", "random": "tab:green", "boundary": "tab:red"}
FIT_ACCURACY = 0.99  # the training set counts as fitted here (t_fit)
COINCIDE_DECADES = 0.5  # H3: "coincides" when the interval of the lag lies within +-this


def _seeds(rows) -> list:
    return sorted({r.get("seed", -1) for r in rows})


def trajectories(rows: Sequence[dict], category: str, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [E], values [S, E])`` of one field of one category (NaN where a row lacks it)."""
    steps = sorted({r["step"] for r in rows})
    seeds = _seeds(rows)
    v = np.full((len(seeds), len(steps)), np.nan)
    si, ei = {s: i for i, s in enumerate(seeds)}, {t: j for j, t in enumerate(steps)}
    for r in rows:
        if r["category"] == category and r.get(field) is not None:
            v[si[r.get("seed", -1)], ei[r["step"]]] = float(r[field])
    return np.asarray(steps), v


def fit_step(rows: Sequence[dict]) -> int | None:
    """``t_fit``: the first evaluated step at which the seeds' mean training accuracy reaches 0.99 (None: never)."""
    steps, acc = trajectories(rows, "train", "train_accuracy")
    hit = np.flatnonzero(np.nanmean(acc, axis=0) >= FIT_ACCURACY)
    return int(steps[hit[0]]) if hit.size else None


def _half_time(steps: np.ndarray, v: np.ndarray, start: int, rising: bool) -> float:
    """log10 of the first step (from index ``start``) at which ``v`` is half way from its extreme to its end."""
    seg = v[start:]
    if seg.size < 2 or not np.all(np.isfinite(seg)):
        return math.nan
    if rising:
        lo = int(np.argmin(seg))
        target = (seg[lo] + seg[-1]) / 2
        idx = lo + int(np.argmax(seg[lo:] >= target))
    else:
        hi = int(np.argmax(seg))
        target = (seg[hi] + seg[-1]) / 2
        idx = hi + int(np.argmax(seg[hi:] <= target))
    return math.log10(max(int(steps[start + idx]), 1))


def three_phases(values) -> tuple[np.ndarray]:
    """Strength of "falls, rises, falls again" of the mean trajectory ``m`` over seeds: ``[...]``.

    ``T = max_{b < c} min(m(0) - m(b), m(c) - m(b), m(c) - m(E-1))``: the
    weakest of the three moves for the best choice of the turning points
    ``b`` (the trough) and ``c`` (the late peak). Positive exactly when some
    ``b < c`` give a fall, a rise and a fall. Used with
    :func:`lr_jax.experiment.claim_statistics.within_seed_permutation`, which
    recomputes it (turning points included) on every permuted data set, so the
    test needs no window chosen from the data.

    Args:
      values: ``[..., S, E]``.
    """
    m = np.mean(np.asarray(values, np.float64), axis=-2)  # [..., E]
    fall1 = m[..., :1] - m  # [..., E] at b
    fall2 = m - m[..., -1:]  # at c
    rise = m[..., None, :] - m[..., :, None]  # [..., b, c]
    e = m.shape[-1]
    later = np.triu(np.ones((e, e), bool), 1)  # c > b
    t = np.minimum(np.minimum(fall1[..., :, None], rise), fall2[..., None, :])
    return (np.max(np.where(later, t, -np.inf), axis=(-2, -1)),)


def turning_points(steps: np.ndarray, values: np.ndarray) -> tuple[int, int]:
    """The steps ``(b, c)`` that maximise :func:`three_phases` on the mean trajectory (where the trough and late peak lie)."""
    m = np.nanmean(values, axis=0)
    e = m.size
    t = np.minimum(np.minimum((m[0] - m)[:, None], m[None, :] - m[:, None]), (m - m[-1])[None, :])
    t = np.where(np.triu(np.ones((e, e), bool), 1), t, -np.inf)
    b, c = np.unravel_index(int(np.argmax(t)), t.shape)
    return int(steps[b]), int(steps[c])


def _row(alpha, hypothesis, part, measure, radius, category, e: cs.Estimate) -> dict:
    return {"alpha": alpha, "hypothesis": hypothesis, "part": part, "measure": measure, "radius": radius, "category": category,
            "estimate": e.mean, "low": e.low, "high": e.high, "p": e.p_value, "held_raw": e.held, "n_seeds": e.n_seeds}


def phase_tests(rows: Sequence[dict], alpha: float, *, seed: int = 0) -> tuple[list[dict], dict]:
    """H1-H3 of one run (one ``alpha``) for every measure and radius, with Holm-corrected verdicts.

    Returns:
      ``(tests, info)``: one dict per test part (``held_raw``, ``p_holm``,
      ``held``); ``info`` holds ``t_fit`` and the per-seed H3 lags.
    """
    radii = next(r["radii"] for r in rows)
    t_fit = fit_step(rows)
    tests, info = [], {"t_fit": t_fit, "lags": {}}
    for m in MEASURES:
        for i, radius in enumerate(radii):
            field = f"{m}_r{i}"
            steps, train = trajectories(rows, "train", field)
            if np.all(np.isnan(train)):
                continue
            _, boundary = trajectories(rows, "boundary", field)
            (three,) = cs.within_seed_permutation(train, three_phases, 1, seed=seed)
            row = _row(alpha, "H1", "fall, rise, fall (whole run)", m, radius, "train", three)
            b, c = turning_points(steps, train)
            row["part"] += f" (trough {b}, late peak {c})"
            tests.append(row)
            early = steps <= (t_fit if t_fit is not None else steps[-1])
            fall1, rise = cs.dip_then_rise(train[:, early], seed=seed)
            tests += [_row(alpha, "H1w", "early fall", m, radius, "train", fall1), _row(alpha, "H1w", "early rise", m, radius, "train", rise)]
            if t_fit is None or int(np.sum(steps >= t_fit)) < 3:
                continue
            late = steps >= t_fit
            fall2 = cs.rise_then_dip(train[:, late], seed=seed)[1]
            tests.append(_row(alpha, "H1w", "late fall", m, radius, "train", fall2))
            tests.append(_row(alpha, "H2", "late fall (train)", m, radius, "train", fall2))
            tests.append(_row(alpha, "H2", "late rise (boundary)", m, radius, "boundary", cs.dip_then_rise(boundary[:, late], seed=seed)[1]))
            i_fit = int(np.flatnonzero(late)[0])
            ratio = np.log((boundary[:, -1] + 1) / (train[:, -1] + 1)) - np.log((boundary[:, i_fit] + 1) / (train[:, i_fit] + 1))
            tests.append(_row(alpha, "H2r", "boundary/train ratio grows", m, radius, "both", cs.sign_flip(ratio[np.isfinite(ratio)], 1, seed=seed)))
            _, acc = trajectories(rows, "test", "test_accuracy")
            start = int(np.flatnonzero(late)[0])
            lag = np.array([_half_time(steps, train[s], start, rising=False) - _half_time(steps, acc[s], 0, rising=True) for s in range(train.shape[0])])
            info["lags"][(m, radius)] = lag
            e = cs.sign_flip(lag[np.isfinite(lag)], 1, seed=seed)
            row = _row(alpha, "H3", "lag (decades)", m, radius, "train", e)
            row["held_raw"] = bool(np.isfinite(e.low) and -COINCIDE_DECADES <= e.low and e.high <= COINCIDE_DECADES)
            row["p"] = math.nan  # an interval criterion, not a one-sided test
            tests.append(row)
    for h in ("H1", "H1w", "H2", "H2r"):
        family = [t for t in tests if t["hypothesis"] == h]
        adjusted = cs.holm([t["p"] for t in family]) if family else []
        for t, p in zip(family, adjusted):
            t["p_holm"] = float(p)
            t["held"] = bool(p <= cs.ALPHA)
    for t in tests:
        if t["hypothesis"] == "H3":
            t["p_holm"], t["held"] = math.nan, t["held_raw"]
    return tests, info


def verdicts(tests: Sequence[dict]) -> list[dict]:
    """Per (alpha, hypothesis, measure, radius): held when every part held (Holm-corrected)."""
    groups: dict = {}
    for t in tests:
        groups.setdefault((t["alpha"], t["hypothesis"], t["measure"], t["radius"]), []).append(t)
    out = []
    for (alpha, h, m, r), parts in groups.items():
        need = {"H1": 1, "H1w": 3, "H2": 2, "H2r": 1, "H3": 1}[h]
        out.append({"alpha": alpha, "hypothesis": h, "measure": m, "radius": r,
                    "held": len(parts) == need and all(p["held"] for p in parts),
                    "parts": " / ".join(f"{p['part']}: {'held' if p['held'] else 'not held'}" for p in parts)})
    return out


def proxy_agreement(rows: Sequence[dict], alpha: float, *, seed: int = 0) -> list[dict]:
    """H4: per category and radius, the seeds' Spearman correlation of the proxy's trajectory with each certified one."""
    radii = next(r["radii"] for r in rows)
    out = []
    for cat in COLOURS:
        for i, radius in enumerate(radii):
            _, proxy = trajectories(rows, cat, f"frame_r{i}")
            for m in ("tight", "paper"):
                _, cert = trajectories(rows, cat, f"{m}_r{i}")
                if np.all(np.isnan(proxy)) or np.all(np.isnan(cert)):
                    continue
                rho = np.array([stats.spearmanr(p, c).statistic if np.nanstd(p) > 0 and np.nanstd(c) > 0 else np.nan
                                for p, c in zip(proxy, cert)])
                e = cs.sign_flip(rho[np.isfinite(rho)], 1, seed=seed)
                out.append({"alpha": alpha, "category": cat, "radius": radius, "certified": m, "rho": e.mean, "low": e.low,
                            "high": e.high, "n_seeds": e.n_seeds})
    return out


def simulate_three_phases(replicates: int, *, seeds: int, epochs: int, rhos=(0.0, 0.5, 0.9), effect: float = 1.6,
                          n_resamples: int = 999, key: int = 0) -> list[dict]:
    """False-held rate and power of the whole-run three-phase test (H1) by simulation.

    No-trend trajectories ``[seeds, epochs]`` with AR(1) noise of lag-1
    correlation ``rho`` (SD 1 per cell; ``rho = 0``: iid), and, for power, a
    planted fall by ``effect`` SD over the first third, a rise back over the
    second and a fall by ``effect`` over the last (iid and ``rho = 0.5``).
    Draws from ``default_rng([key, scenario, replicate])``.

    Returns:
      One dict per scenario: ``scenario``, ``kind`` (``false held`` or
      ``power``), ``held``, ``replicates``.
    """
    third = np.linspace(0.0, 3.0, epochs)
    trend = -effect * np.clip(third, 0, 1) + effect * np.clip(third - 1, 0, 1) - effect * np.clip(third - 2, 0, 1)
    scenarios = [(f"AR(1) {r:g}, no trend", r, False) for r in rhos] + [(f"AR(1) {r:g}, {effect:g}-SD three phases", r, True) for r in rhos[:2]]
    out = []
    for index, (name, rho, planted) in enumerate(scenarios):
        held = 0
        for rep in range(replicates):
            rng = np.random.default_rng([key, index, rep])
            w = rng.normal(size=(seeds, epochs))
            noise = np.empty_like(w)
            noise[:, 0] = w[:, 0]
            for e in range(1, epochs):
                noise[:, e] = rho * noise[:, e - 1] + math.sqrt(1 - rho**2) * w[:, e]
            v = noise + (trend if planted else 0.0)
            held += int(cs.within_seed_permutation(v, three_phases, 1, seed=rep, n_resamples=n_resamples)[0].held)
        out.append({"scenario": name, "kind": "power" if planted else "false held", "held": held, "replicates": replicates})
    return out


def simulation_markdown(rows: Sequence[dict], seeds: int, epochs: int) -> str:
    """The table of :func:`simulate_three_phases`, with Monte-Carlo standard errors."""
    lines = [f"Three-phase test (H1), {seeds} seeds x {epochs} evaluations, level {cs.ALPHA:g}:", "",
             "| scenario | kind | held | rate (MC s.e.) |", "| --- | --- | --- | --- |"]
    for r in rows:
        rate = r["held"] / r["replicates"]
        se = math.sqrt(max(rate * (1 - rate), 1e-12) / r["replicates"])
        lines.append(f"| {r['scenario']} | {r['kind']} | {r['held']}/{r['replicates']} | {100 * rate:.1f} % ({100 * se:.1f}) |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Figures


def _mean_curve(rows, category, field):
    steps, v = trajectories(rows, category, field)
    return np.maximum(steps, 0.5), np.nanmean(v, axis=0), v


def _accuracy_panel(ax, rows, label: str) -> None:
    """Mean train (solid) and test (dashed) accuracy against steps."""
    for field, style in (("train_accuracy", "-"), ("test_accuracy", "--")):
        steps, mean, _ = _mean_curve(rows, "train", field)
        ax.plot(steps, mean, style, color="k", label=field.replace("_", " "))
    ax.set_ylabel(label)
    ax.legend(fontsize=7)


def _measure_panels(axes, rows, present, radius_index: int, radius: float, bands: bool) -> None:
    """One panel per neuron measure: every category's mean (and, with ``bands``, its 2.5-97.5 % range over seeds)."""
    for ax, m in zip(axes, present):
        for cat, colour in COLOURS.items():
            steps, mean, v = _mean_curve(rows, cat, f"{m}_r{radius_index}")
            ax.plot(steps, mean, color=colour, label=cat)
            if bands:
                ax.fill_between(steps, *np.nanpercentile(v, [2.5, 97.5], axis=0), color=colour, alpha=0.15, lw=0)
        ax.set_title(f"{MEASURE_LABELS[m]}, r = {radius:g}", fontsize=9)


def _save(fig, axes, path, xlabel: str, title: str = "") -> None:
    """Log step axes and grids on every panel, the x label on the bottom row, then the PNG."""
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def plot_run(rows: Sequence[dict], path: str | Path, title: str = "") -> None:
    """One run: accuracy, then each measure at each radius, every category, against steps (log axis; step 0 at 0.5)."""
    radii = next(r["radii"] for r in rows)
    present = [m for m in MEASURES if any(f"{m}_r0" in r for r in rows)]
    fig, axes = plt.subplots(len(radii), len(present) + 1, figsize=(4.2 * (len(present) + 1), 3.2 * len(radii)), squeeze=False)
    for i, radius in enumerate(radii):
        _accuracy_panel(axes[i, 0], rows, "accuracy")
        _measure_panels(axes[i, 1:], rows, present, i, radius, bands=False)
        axes[i, 1].legend(fontsize=7)
    _save(fig, axes, path, "step (0 drawn at 0.5)", title)


def plot_study(runs: dict, path: str | Path, radius_index: int) -> None:
    """Both alphas (rows) at one radius: accuracy, every neuron measure, and the region counts.

    Curves are means over seeds; bands the 2.5-97.5 % range over seeds. The
    last column is ``log2`` of the regions found by sampling (solid, a lower
    bound) and, at the smallest radius, of the exact count (dotted; on the
    first ``grokking.exact_points`` points only, stopped counts are lower
    bounds).
    """
    alphas = sorted(runs)
    first = next(iter(runs.values()))
    present = [m for m in MEASURES if any(f"{m}_r0" in r for r in first)]
    regions = any("sampled_log2_r0" in r for r in first)
    cols = len(present) + 1 + int(regions)
    fig, axes = plt.subplots(len(alphas), cols, figsize=(4.2 * cols, 3.3 * len(alphas)), squeeze=False)
    for a, alpha in enumerate(alphas):
        rows = runs[alpha]
        radius = next(r["radii"] for r in rows)[radius_index]
        t_fit = fit_step(rows)
        _accuracy_panel(axes[a, 0], rows, f"alpha = {alpha:g}\naccuracy")
        _measure_panels(axes[a, 1 : 1 + len(present)], rows, present, radius_index, radius, bands=True)
        if regions:
            ax = axes[a, -1]
            for cat, colour in COLOURS.items():
                steps, mean, _ = _mean_curve(rows, cat, f"sampled_log2_r{radius_index}")
                ax.plot(steps, mean, color=colour, label=cat)
                if radius_index == 0 and any("exact_mean_log2_count" in r for r in rows):
                    steps, mean, _ = _mean_curve(rows, cat, "exact_mean_log2_count")
                    ax.plot(steps, mean, ":", color=colour)
            ax.set_title(f"log2 regions: sampled{' / exact (dotted)' if radius_index == 0 else ''}, r = {radius:g}", fontsize=9)
        for ax in axes[a]:
            if t_fit is not None:
                ax.axvline(max(t_fit, 0.5), color="grey", ls=":", lw=1)
        axes[a, 1].legend(fontsize=7)
    _save(fig, axes, path, "step (0 drawn at 0.5; grey dotted: t_fit)")


# ---------------------------------------------------------------------------
# Tables


def _fmt(x, digits=2):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def tests_markdown(tests: Sequence[dict]) -> str:
    """Every test part: estimate, 95 % interval, raw and Holm p, verdict."""
    lines = ["| alpha | hypothesis | part | measure | r | estimate [95 % interval] | p | p (Holm) | held |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in tests:
        lines.append(f"| {t['alpha']:g} | {t['hypothesis']} | {t['part']} | {t['measure']} | {t['radius']:g} | {_fmt(t['estimate'])} "
                     f"[{_fmt(t['low'])}, {_fmt(t['high'])}] | {_fmt(t['p'], 4)} | {_fmt(t['p_holm'], 4)} | {'yes' if t['held'] else 'no'} |")
    return "\n".join(lines) + "\n"


def verdicts_markdown(v: Sequence[dict]) -> str:
    """Per alpha and hypothesis, a measure x radius grid of verdicts."""
    lines = ["| alpha | hypothesis | radius | " + " | ".join(MEASURES) + " |", "| --- | --- | --- | " + " | ".join("---" for _ in MEASURES) + " |"]
    keys = sorted({(x["alpha"], x["hypothesis"], x["radius"]) for x in v})
    table = {(x["alpha"], x["hypothesis"], x["radius"], x["measure"]): x["held"] for x in v}
    for alpha, h, r in keys:
        cells = [("held" if table[(alpha, h, r, m)] else "not held") if (alpha, h, r, m) in table else "n/a" for m in MEASURES]
        lines.append(f"| {alpha:g} | {h} | {r:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def agreement_markdown(rows: Sequence[dict]) -> str:
    """H4: mean per-seed Spearman correlation of proxy and certified trajectories, with its interval."""
    lines = ["| alpha | category | r | certified | mean Spearman rho [95 % interval] |", "| --- | --- | --- | --- | --- |"]
    for x in rows:
        lines.append(f"| {x['alpha']:g} | {x['category']} | {x['radius']:g} | {x['certified']} | {_fmt(x['rho'])} [{_fmt(x['low'])}, {_fmt(x['high'])}] |")
    return "\n".join(lines) + "\n"


def trajectory_markdown(rows: Sequence[dict], alpha: float, radius_index: int, steps_shown: Sequence[int] | None = None) -> str:
    """Mean over seeds of every measure and accuracy at selected steps (the numbers behind the figures)."""
    steps = sorted({r["step"] for r in rows})
    if steps_shown is None:
        steps_shown = steps
    radius = next(r["radii"] for r in rows)[radius_index]
    head = ["step", "train acc", "test acc"] + [f"{m} {c}" for m in MEASURES for c in ("train", "boundary")]
    lines = [f"alpha = {alpha:g}, r = {radius:g} (means over seeds)", "", "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for t in steps_shown:
        at = [r for r in rows if r["step"] == t]
        def mean(cat, field):
            vals = [r[field] for r in at if r["category"] == cat and r.get(field) is not None]
            return float(np.mean(vals)) if vals else math.nan
        cells = [str(t), _fmt(mean("train", "train_accuracy"), 3), _fmt(mean("train", "test_accuracy"), 3)]
        cells += [_fmt(mean(c, f"{m}_r{radius_index}"), 1) for m in MEASURES for c in ("train", "boundary")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# A study's report (I/O: called by scripts/grokking_report.py)


def load_runs(multirun_dir: str | Path) -> dict:
    """``{alpha: rows}`` of every complete grokking run under ``multirun_dir`` (a sweep folder or one run).

    Raises:
      FileNotFoundError: no run folder.
      RunFileError: a damaged file (named), or a run that is not complete.
    """

    root = Path(multirun_dir)
    dirs = [root] if (root / "config.yaml").is_file() else sorted(p.parent for p in root.glob("*/config.yaml"))
    if not dirs:
        raise FileNotFoundError(f"{root}: no grokking run (no */config.yaml); run `python scripts/train.py -m experiment=grokking` first.")
    runs, where = {}, {}
    for d in dirs:
        cfg = read_yaml(d / "config.yaml", what="recorded config")
        if cfg.get("study") != "grokking":
            raise RunFileError(f"{d}: not a grokking run (study={cfg.get('study')!r}); point the report at the grokking sweep's folder.")
        status = read_json(d / "status.json", what="run status") if (d / "status.json").is_file() else {}
        if status.get("status") != "complete":
            what = status.get("status", "not started")
            fix = ("wait for it to finish" if what == "running" else
                   f"finish it with `python scripts/train.py resume=true hydra.run.dir={d}`")
            raise RunFileError(f"{d}: run is {what}, not complete; {fix}.")
        alpha = float(cfg["grokking"]["alpha"])
        if alpha in runs:
            raise RunFileError(f"{d}: a second run with grokking.alpha={alpha:g} (the first: {where[alpha]}); the report compares "
                               "one run per alpha: point it at a folder holding one run of each alpha.")
        g = cfg["grokking"]
        # every (step, seed, category) of the schedule, and the per-point arrays to the last step (one line if not)
        rows, _ = records_up_to(d, eval_steps(g["steps"], g["num_evals"]), g["steps"], run_seeds(cfg), CATEGORIES, "step")
        runs[alpha], where[alpha] = rows, d
    radii = {tuple(r["radii"]) for rows in runs.values() for r in rows}
    if len(radii) > 1:
        raise RunFileError(f"{root}: the runs measured different grokking.radii {sorted(radii)}; report runs of one setting together.")
    return runs


def report_study(multirun_dir: str | Path, out: str | Path, *, seed: int = 0, calibrate: int = 0) -> list[Path]:
    """Figures, test tables and ``grokking_tests.json`` of a grokking sweep into ``out``; returns the paths written."""

    runs = load_runs(multirun_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    radii = next(r["radii"] for r in next(iter(runs.values())))
    for i, radius in enumerate(radii):
        path = out / f"grokking_r{i}.png"
        atomic_write(path, lambda p, i=i: plot_study(runs, p, i))
        written.append(path)
    tests, infos, agreement = [], {}, []
    for alpha, rows in sorted(runs.items()):
        t, info = phase_tests(rows, alpha, seed=seed)
        tests += t
        infos[alpha] = info
        agreement += proxy_agreement(rows, alpha, seed=seed)
    v = verdicts(tests)
    parts = ["# Grokking study: tables\n", "Generated by `python scripts/grokking_report.py`; every number below is computed from the runs' `metrics.jsonl`.\n"]
    for alpha, info in sorted(infos.items()):
        parts.append(f"- alpha = {alpha:g}: t_fit (first step with mean train accuracy >= {FIT_ACCURACY}) = {info['t_fit']}; seeds = {len(_seeds(runs[alpha]))}\n")
    parts += ["\n## Verdicts (Holm-corrected within each hypothesis and alpha)\n\n", verdicts_markdown(v)]
    parts += ["\n## Every test\n\n", tests_markdown(tests)]
    parts += ["\n## H4: proxy against certified trajectories\n\n", agreement_markdown(agreement)]
    for alpha, rows in sorted(runs.items()):
        for i in range(len(radii)):
            parts += ["\n## Trajectory table\n\n", trajectory_markdown(rows, alpha, i)]
    if calibrate:
        s_, e_ = len(_seeds(next(iter(runs.values())))), len({r["step"] for r in next(iter(runs.values()))})
        parts += ["\n## Calibration of the three-phase test\n\n", simulation_markdown(simulate_three_phases(calibrate, seeds=s_, epochs=e_), s_, e_)]
    md = out / "grokking_tables.md"
    atomic_write(md, lambda p: p.write_text("".join(parts)))
    js = out / "grokking_tests.json"
    payload = {"tests": tests, "verdicts": v, "agreement": agreement,
               "t_fit": {str(a): i["t_fit"] for a, i in infos.items()},
               "lags": {str(a): {f"{m}@{r:g}": lag.tolist() for (m, r), lag in i["lags"].items()} for a, i in infos.items()}}
    atomic_write(js, lambda p: p.write_text(json.dumps(json_safe(payload), indent=1)))
    return written + [md, js]
