"""How robust each of the paper's claims is: the claim verdicts of several sweeps side by side.

Each sweep is one setting (the default, or one choice changed: input scale,
width, batch size, initialisation, training length; ``configs/robustness/``).
Every claim is judged per setting with :func:`lr_jax.experiment.claims.claim_intervals`
(a calibrated one-sided test at 0.025 with the 95 % interval that inverts it,
and the Holm-corrected verdict within each claim's family of one setting),
and the verdicts are laid out claim x setting. Pure functions of the sweeps' metrics rows.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from lr_jax.experiment.claim_statistics import interval_text
from lr_jax.experiment.claims import claim_intervals

# The key test of each claim, shown with its number in the claim x setting table:
# (claim, test, category) as claim_intervals names them.
KEY_TESTS = (
    (1, "drop to the minimum", "train"),
    (1, "rise after the minimum", "train"),
    (2, "rise to the maximum", "train"),
    (2, "fall after the maximum", "train"),
    (3, "relative mean fall, train minus random1", "train"),
    (4, "train minus random1", "train"),
    (5, "growth, first to last epoch", "train"),
)
# Tests counted together in the verdict-count table: the claim's statement over every category.
CLAIM_TESTS = {
    "1. bound falls": (1, "drop to the minimum"),
    "1. ... then rises": (1, "rise after the minimum"),
    "2. distance rises": (2, "rise to the maximum"),
    "2. ... then falls": (2, "fall after the maximum"),
    "3. clearer on train/test than random": (3, None),
    "4. more regions at train than random": (4, None),
    "5. more single-region balls": (5, None),
}


def setting_intervals(settings: Mapping[str, Sequence[dict]], metric: str = "mean_log2_bound") -> list[dict]:
    """:func:`claim_intervals` of every setting, each row with a ``setting`` field.

    Args:
      settings: ``{setting name: metrics rows of its sweep}`` (rows as
        :func:`lr_jax.experiment.sweep.collect_runs` returns them).
      metric: the local-complexity measure of claims 1, 3 and 4.
    """
    return [{"setting": name, **r} for name, rows in settings.items() for r in claim_intervals(rows, metric)]


DATA_CATEGORIES = ("train", "test")


def verdict_counts(intervals: Sequence[dict], categories: Sequence[str] | None = None) -> list[dict]:
    """Per claim statement, setting and learning rate, in how many (depth, category) tests the claim held.

    Args:
      intervals: :func:`setting_intervals` rows.
      categories: count only the tests of these categories (claims 3 and 4
        name a data category: train or test); None counts every test.

    Returns:
      ``{"claim", "setting", "lr", "held", "held_holm", "tests"}`` per
      (statement of :data:`CLAIM_TESTS`, setting, lr): raw verdicts and
      Holm-corrected ones (within the claim's family of the setting),
      settings in their first-seen order, learning rates from the largest.
    """
    settings = list(dict.fromkeys(r["setting"] for r in intervals))
    lrs = sorted({r["lr"] for r in intervals}, reverse=True)
    out = []
    for label, (claim, test) in CLAIM_TESTS.items():
        for s in settings:
            for lr in lrs:
                rows = [r for r in intervals if r["setting"] == s and r["lr"] == lr and r["claim"] == claim
                        and (test is None or r["test"] == test)
                        and (categories is None or r["category"] in categories)]
                out.append({"claim": label, "setting": s, "lr": lr, "held": sum(bool(r["held"]) for r in rows),
                            "held_holm": sum(bool(r.get("held_holm")) for r in rows), "tests": len(rows)})
    return out


def robustness_markdown(intervals: Sequence[dict], title: str = "How robust are the claims?") -> str:
    """Two markdown tables of :func:`setting_intervals`' rows.

    First claim x setting with the number of (depth, category) tests in
    which the claim held at each learning rate, raw and after Holm's
    correction, over every category, then over the data categories and over
    the random ones apart; then, per (lr, depth), each key test (:data:`KEY_TESTS`) x
    setting with its estimate, 95 % interval and raw verdict.
    """
    if not intervals:
        return ""
    settings = list(dict.fromkeys(r["setting"] for r in intervals))
    lrs = sorted({r["lr"] for r in intervals}, reverse=True)
    lines = [f"### {title}", "",
             "Tests held, per learning rate (" + " / ".join(f"lr {lr:g}" for lr in lrs) + "), over depths and "
             "categories, as raw (Holm) counts: raw, a test holds when its one-sided p-value is at most 0.025 "
             "(then its 95 % interval excludes zero in the claimed direction); Holm, after Holm's correction within "
             "the claim's family of the setting (lr x depth x category):", ""]
    random_categories = tuple(sorted({r["category"] for r in intervals} - set(DATA_CATEGORIES)))
    for name, cats in (("every category", None), ("data categories (train, test)", DATA_CATEGORIES),
                       ("random categories (" + ", ".join(random_categories) + ")", random_categories)):
        counts = {(c["claim"], c["setting"], c["lr"]): c for c in verdict_counts(intervals, cats)}
        labels = [label for label in CLAIM_TESTS if any(counts[(label, s, lr)]["tests"] for s in settings for lr in lrs)]
        if not labels:
            continue
        lines += [f"{name.capitalize()}:", ""]
        lines += ["| claim | " + " | ".join(settings) + " |", "|" + " --- |" * (len(settings) + 1)]
        for label in labels:
            cells = [" / ".join(f"{counts[(label, s, lr)]['held']} ({counts[(label, s, lr)]['held_holm']})"
                                f"/{counts[(label, s, lr)]['tests']}" for lr in lrs) for s in settings]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Key tests, estimate [95 % interval]; **bold** = held (raw), * = held after Holm:", ""]
    lines += ["| claim | lr | depth | test | " + " | ".join(settings) + " |", "|" + " --- |" * (len(settings) + 4)]
    index = {(r["setting"], r["claim"], r["test"], r["category"], r["lr"], r["depth"]): r for r in intervals}
    pairs = sorted({(r["lr"], r["depth"]) for r in intervals}, key=lambda p: (-p[0], p[1]))
    for claim, test, category in KEY_TESTS:
        for lr, depth in pairs:
            cells = []
            for s in settings:
                r = index.get((s, claim, test, category, lr, depth))
                if r is None:
                    cells.append("")
                    continue
                text = interval_text(r["mean"], r["low"], r["high"])
                text = f"**{text}**" if r["held"] else text
                cells.append(text + (" *" if r.get("held_holm") else ""))
            lines.append(f"| {claim} | {lr:g} | {depth} | {test} ({category}) | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
