"""Paired statistics: McNemar, bootstrap coverage, permutation p-values, Holm, MDE, report flags."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from itune.eval.forgetting import build_report, compare_runs, write_report
from itune.eval.items import item_ids, item_scores, means, read_items
from itune.eval.stats import (
    StatsConfig,
    compare_metric,
    estimate,
    exact_floor,
    holm,
    mcnemar_p,
    mde_table,
    min_detectable_effect,
    permutation_p,
)

MEAN = {"stat": "mean", "column": "x"}
PPL = {"stat": "exp_ratio", "num": "loss_sum", "den": "tokens"}


def rows(values, column: str = "x") -> list[dict]:
    """Item rows with ids 0..n-1 and one column."""
    return [{"id": str(i), column: v} for i, v in enumerate(values)]


def test_mcnemar_on_a_known_table_equals_scipy_exact_binomial():
    # 2x2 table: both right 50, base right & tuned wrong 12, base wrong & tuned right 3, both wrong 35
    base = np.array([1] * 50 + [1] * 12 + [0] * 3 + [0] * 35)
    tuned = np.array([1] * 50 + [0] * 12 + [1] * 3 + [0] * 35)
    p = mcnemar_p(base, tuned)
    assert p == binomtest(12, 15, 0.5).pvalue
    assert p == pytest.approx(2 * (1 + 15 + 105 + 455) / 2**15)  # 2 P(X <= 3), X ~ Bin(15, 1/2)
    st = compare_metric(MEAN, rows(base), rows(tuned), lower_is_better=False)
    assert st.test == "mcnemar" and st.p == p and st.n == 100


@pytest.mark.parametrize("binary", [False, True])
def test_bootstrap_ci_covers_the_true_delta(binary):
    true_delta, covered = 0.05, 0
    config = StatsConfig(n_boot=1000)
    for rep in range(100):
        rng = np.random.default_rng(rep)
        if (
            binary
        ):  # tuned loses 15% and gains 20% of base's answers at random: delta = 0.2 * 0.4 - 0.15 * 0.6
            base = (rng.random(300) < 0.6).astype(int)
            flip = rng.random(300) < np.where(base == 1, 0.15, 0.2)
            tuned, true_delta = np.where(flip, 1 - base, base), 0.2 * 0.4 - 0.15 * 0.6
        else:
            base = rng.normal(0.5, 0.2, 200)
            tuned = base + true_delta + rng.normal(0, 0.1, 200)
        st = compare_metric(MEAN, rows(base), rows(tuned), False, config)
        covered += st.ci_lo <= true_delta <= st.ci_hi
    assert covered >= 93


def test_identical_items_give_zero_delta_p_one_and_no_flag():
    rng = np.random.default_rng(0)
    scores = {
        "mc": item_scores(means(["acc"]), rows((rng.random(40) < 0.5).astype(int), "acc")),
        "ppl": item_scores(
            {"ref_ppl": PPL},
            [{"id": str(i), "loss_sum": float(x), "tokens": 10} for i, x in enumerate(rng.random(40) * 30)],
        ),
    }
    base = {"eval/mc/acc": 0.5, "eval/ppl/ref_ppl": 5.0}
    report = build_report(base, dict(base), {}, items={"base": scores, "tuned": scores})
    for row in report["rows"]:
        assert row["delta"] == 0 and row["improvement"] == 0
        assert row["p"] == 1.0 and row["p_adj"] == 1.0 and (row["ci_lo"], row["ci_hi"]) == (0.0, 0.0)
        assert not row["significant"] and not row["regression"]
    assert report["summary"]["forgetting/regressions"] == 0
    assert (
        report["summary"]["forgetting/general_delta_lo"]
        == 0
        == report["summary"]["forgetting/general_delta_hi"]
    )


def test_one_flipped_item_on_ten_is_not_flagged():
    base = [1, 1, 1, 0, 1, 0, 1, 1, 0, 1]
    tuned = [0, 1, 1, 0, 1, 0, 1, 1, 0, 1]  # one answer lost: -0.1, far beyond the 0.02 threshold
    items = {
        m: {"s": item_scores(means(["acc"]), rows(v, "acc"))} for m, v in (("base", base), ("tuned", tuned))
    }
    report = build_report({"eval/s/acc": 0.7}, {"eval/s/acc": 0.6}, {}, items=items)
    (row,) = report["rows"]
    assert row["improvement"] == pytest.approx(-0.1) and row["p"] == 1.0  # McNemar: 1 discordant pair
    assert not row["regression"] and row["mde"] >= exact_floor(10) == 0.6
    assert report["summary"]["forgetting/regressions"] == 0


def test_a_large_consistent_drop_is_flagged():
    base, tuned = [1] * 40 + [0] * 20, [0] * 30 + [1] * 10 + [0] * 20  # 30 lost, none gained
    items = {
        m: {"s": item_scores(means(["acc"]), rows(v, "acc"))} for m, v in (("base", base), ("tuned", tuned))
    }
    report = build_report({"eval/s/acc": 40 / 60}, {"eval/s/acc": 10 / 60}, {}, items=items)
    (row,) = report["rows"]
    assert row["p"] == pytest.approx(2 * 0.5**30) and row["regression"] and row["ci_hi"] < 0
    assert report["summary"]["forgetting/significant_regressions"] == 1


def test_permutation_p_is_exact_for_small_n():
    base, tuned = np.array([[1.0], [2.0], [3.0]]), np.array([[2.0], [3.0], [4.5]])
    # all 8 swaps: only "none" and "all" reach |mean difference| >= observed
    assert permutation_p(MEAN, base, tuned, 2000, np.random.default_rng(0)) == 2 / 8


def test_ratio_of_sums_estimator_and_lower_is_better_direction():
    base = [{"id": str(i), "loss_sum": 20.0, "tokens": 10} for i in range(30)]
    tuned = [{"id": str(i), "loss_sum": 30.0, "tokens": 10} for i in range(30)]
    assert float(estimate(PPL, np.array([600.0, 300.0]), 30)) == pytest.approx(np.exp(2.0))
    st = compare_metric(PPL, base, tuned, lower_is_better=True)
    expected = (np.exp(2) - np.exp(3)) / np.exp(2)  # relative drop of perplexity
    assert st.ci_lo == pytest.approx(expected) and st.ci_hi == pytest.approx(expected)
    assert st.test == "permutation" and st.p == pytest.approx(2 / 2001, abs=2e-3)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.5]) == [0.04, 0.09, 0.09, 0.5]
    assert holm([]) == []


def test_min_detectable_effect_values_and_power():
    assert min_detectable_effect(100, 0.5) == pytest.approx(0.1958, abs=1e-3)
    assert min_detectable_effect(10, 0.3) == pytest.approx(0.6)  # the exact floor: 6 of 10 items
    assert min_detectable_effect(1000, 0.5, discordance=0.1) < min_detectable_effect(1000, 0.5)
    sizes = [min_detectable_effect(n, 0.3) for n in (10, 32, 100, 300, 1000)]
    assert sizes == sorted(sizes, reverse=True)
    # simulated power of McNemar at n=300, base 0.5, independent errors, drop = MDE: about 0.8
    delta, rng, hits = min_detectable_effect(300, 0.5), np.random.default_rng(1), 0
    for _ in range(400):
        base, tuned = rng.random(300) < 0.5, rng.random(300) < 0.5 - delta
        hits += mcnemar_p(base.astype(int), tuned.astype(int)) < 0.05
    assert 0.72 <= hits / 400 <= 0.9
    assert mde_table([10, 100], [0.3, 0.5]).splitlines()[3] == "| 100 | 0.179 | 0.196 |"


def test_stats_config_from_cfg():
    assert StatsConfig.from_cfg({"n_boot": 10}) == StatsConfig(n_boot=10)
    with pytest.raises(ValueError, match="unknown key"):
        StatsConfig.from_cfg({"nboot": 10})
    with pytest.raises(ValueError, match="alpha"):
        StatsConfig.from_cfg({"alpha": 2})


def test_compare_runs_kl_rows_summary_bounds_and_items_files(tmp_path):
    base_rows = rows([1] * 30 + [0] * 30, "ok")
    tuned_rows = rows([1] * 45 + [0] * 15, "ok")
    items = {
        "base": {"dom": item_scores(means(["ok"]), base_rows, format="plain")},
        "tuned": {"dom": item_scores(means(["ok"]), tuned_rows, format="plain")},
    }
    base = {"eval/dom/ok": 0.5, "val/general/loss": 2.0, "val/domain/loss": 3.0}
    tuned = {"eval/dom/ok": 0.75, "val/general/loss": 2.1, "val/domain/loss": 2.0}
    tuned |= {"val/general/kl_base": 0.04, "val/domain/kl_base": 0.3}
    suites = {"dom": type("S", (), {"kind": "domain"})()}
    eval_cfg = {"general_sources": ["general"], "stats": {"n_boot": 500}}
    report = compare_runs(base, tuned, suites, ["general", "domain"], eval_cfg, items)
    rows_by = {r["metric"]: r for r in report["rows"]}
    kl = rows_by["val/general/kl_base"]
    assert kl["informational"] and kl["kind"] == "general" and kl["tuned"] == 0.04 and not kl["regression"]
    assert rows_by["val/domain/kl_base"]["kind"] == "domain"
    loss = rows_by["val/general/loss"]
    assert loss["n"] is None and loss["ci_lo"] is None and loss["p"] is None and not loss["regression"]
    s = report["summary"]
    assert s["forgetting/kl_general"] == 0.04
    assert s["forgetting/general_delta"] == pytest.approx(-0.05)  # the loss row only; KL is not averaged
    assert s["forgetting/general_delta_lo"] == s["forgetting/general_delta_hi"] == pytest.approx(-0.05)
    gain = (0.25 + 1 / 3) / 2
    assert s["gain/domain_delta"] == pytest.approx(gain)
    assert s["gain/domain_delta_lo"] < gain < s["gain/domain_delta_hi"]
    assert rows_by["eval/dom/ok"]["significant"] and report["suites"] == {
        "dom": {"format": "plain", "estimators": means(["ok"])}
    }

    write_report(report, tmp_path, items)
    assert read_items(tmp_path / "items_tuned.jsonl") == {"dom": tuned_rows}
    assert read_items(tmp_path / "items_base.jsonl") == {"dom": base_rows}
    markdown = (tmp_path / "forgetting.md").read_text()
    assert "| val/general/kl_base | general | n/a |" in markdown and "info" in markdown
    assert "| val/general/loss | general | n/a | 2.0000 | 2.1000 | -0.0500 | n/a | n/a | n/a |" in markdown


def test_item_ids_are_stable_and_unique():
    assert item_ids(["q1", "q2", "q1"]) == item_ids(["q1", "q2", "q1"])
    assert len(set(item_ids(["q"] * 5))) == 5
    with pytest.raises(ValueError, match="unique"):
        item_scores({}, [{"id": "a"}, {"id": "a"}])
