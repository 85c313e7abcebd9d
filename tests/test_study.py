"""The sample-efficiency study's headline table: its rows by hand, and the README holds the current one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.sample_efficiency import CODE_COMMIT_FILE, RESULTS
from bench.study_report import (
    HEADLINE_END,
    HEADLINE_START,
    cost_rows,
    gpu_update_rates,
    headline_table,
    placement,
    verdict,
)

REPO = Path(__file__).resolve().parent.parent


def test_headline_rows_give_both_modes_and_unfinished_runs():
    study = {
        "task": {
            "finals": {
                "deterministic": {
                    "omad": {"final_return_iqm": [812.4, 700.0, 900.6], "seeds": [0, 1, 2], "jobs": 5, "budget": 50000},
                    "hasac": {"final_return_iqm": None, "seeds": None, "jobs": 3, "budget": None},
                },
                "stochastic": {
                    "omad": {"final_return_iqm": [640.0, 610.2, 655.5], "seeds": [0, 1, 2], "jobs": 5, "budget": 50000}
                },
            }
        }
    }
    table = headline_table(study, "abc123").splitlines()
    assert "| task | omad | 3 of 5 | 50000 | 812 [700, 901] | 640 [610, 656] |" in table
    assert "| task | hasac | 0 of 3 | - | in progress | in progress |" in table
    assert "`abc123`" in table[0]


def test_readme_headline_is_the_committed_studys():
    study = json.loads((RESULTS / "study" / "study.json").read_text())
    commit = (RESULTS / "study" / CODE_COMMIT_FILE).read_text().strip()[:12]
    readme = (REPO / "README.md").read_text()
    block = re.search(re.escape(HEADLINE_START) + r"\n(.*)\n" + re.escape(HEADLINE_END), readme, re.S)
    assert block is not None, "README.md lacks the headline table markers"
    assert block.group(1) == headline_table(study, commit)


def _report(p_gauss, p_gauss_other, hasac_at_15k, hasac_control, ratios):
    """A report of one env as `write_report` shapes it, only the fields the verdict reads."""

    def eff(ratio, baseline_step=15000, budget=15000):
        if ratio is None:
            return {
                "reached": False,
                "ratio_upper_bound": 1.0,
                "baseline_step": baseline_step,
                "baseline_budget": budget,
            }
        return {"reached": True, "ratio": ratio, "baseline_step": baseline_step, "baseline_budget": budget}

    algos = {
        "omad": {"budget": 50000, "seeds": [0, 1, 2], "final_return_iqm": [4800.4, 4500.0, 5100.0]},
        "omad-gaussian": {"budget": 50000, "seeds": [0, 1, 2], "final_return_iqm": [4500.0, 4300.0, 4900.0]},
        "hasac (control)": {"budget": 15000, "seeds": [0, 1], "final_return_iqm": hasac_control},
    }
    other = {"mode": "stochastic", "envs": {"E": {"probability_of_improvement": {"omad-gaussian": p_gauss_other}}}}
    return {
        "mode": "deterministic",
        "envs": {
            "E": {
                "algos": algos,
                "probability_of_improvement": {"omad-gaussian": p_gauss},
                "sample_efficiency": {
                    "omad-gaussian": eff(ratios[0], 50000, 50000),
                    "hasac": eff(ratios[1], baseline_step=2500),
                    "hasac (control)": eff(ratios[2]),
                },
            }
        },
        "other_mode": other if p_gauss_other else {"mode": "stochastic", "envs": {}},
        "at": {
            "E": {
                "omad": {"deterministic": {"15000": [500.0, 400.0, 600.0]}},
                "hasac": {"deterministic": {"15000": hasac_at_15k} if hasac_at_15k else {}},
            }
        },
    }


CONTROLS = {"hasac": "hasac (control)"}


def test_verdict_reads_placement_presets_share_and_ratios_by_hand():
    report = _report(
        [0.83, 0.33, 1.0], [0.9, 0.6, 1.0], [-100.0, -150.0, -50.0], [380.0, 300.0, 450.0], [1.18, 6.0, 1.03]
    )
    lines = verdict(report, "E", CONTROLS, [])
    assert len(lines) == 3
    # the interval [0.33, 1.00] holds 1/2: not distinguishable; the other mode's [0.6, 1.0] excludes it: above
    assert (
        "OMAD **is not distinguishable from** OMAD-Gaussian in the deterministic mode: IQM 4800 [4500, 5100]"
        in lines[0]
    )
    assert "In the stochastic mode it ends above it (P = 0.90 [0.60, 1.00])" in lines[0]
    # OMAD's lead at 15k is 500 - (-100) = 600; OMAD's settings add 380 - (-100) = 480: 80% of it
    assert "HASAC scores -100 [-150, -50] at its presets and 380 [300, 450] at OMAD's settings" in lines[1]
    assert "where OMAD scores 500 [400, 600]: OMAD's settings close 80% of OMAD's lead of 600 in IQM." in lines[1]
    assert "HASAC 6.00x (B's own curve first reaches its final return at 2500 of 15000 steps)" in lines[2]
    assert "no ratio of a baseline that learned to its budget is at or above 2.5x; those that are (HASAC)" in lines[2]


def test_verdict_other_cases_by_hand():
    # P's interval below 1/2; the control above OMAD at 15k (and the intervals apart); a matched ratio of 2.6x
    below = _report([0.1, 0.0, 0.4], [0.5, 0.2, 0.8], [200.0, 150.0, 250.0], [650.0, 620.0, 700.0], [None, 1.2, 2.6])
    lines = verdict(below, "E", CONTROLS, [])
    assert "OMAD **ends below** OMAD-Gaussian" in lines[0] and "stochastic mode it is not distinguishable" in lines[0]
    assert "HASAC ends at or above OMAD: its presets explain all of OMAD's lead." in lines[1]
    assert "OMAD-Gaussian not reached (< 1.00x)" in lines[2]
    assert "at matched settings: HASAC (control)." in lines[2]
    # the control no better than the presets, with overlapping intervals; no other mode recorded
    worse = _report([0.9, 0.6, 1.0], None, [200.0, 100.0, 300.0], [150.0, 50.0, 250.0], [1.0, 1.0, 1.0])
    lines = verdict(worse, "E", CONTROLS, [])
    assert "OMAD **ends above** OMAD-Gaussian" in lines[0] and "stochastic" not in lines[0]
    assert "do not raise HASAC's IQM, so its presets do not explain OMAD's lead (the two intervals overlap" in lines[1]
    # OMAD not ahead of the presets at 15k
    assert (
        "OMAD is not ahead of HASAC"
        in verdict(_report([0.5, 0.2, 0.8], None, [600.0, 0, 0], [0.0, 0, 0], [1, 1, 1]), "E", CONTROLS, [])[1]
    )
    # the presets' curve has no evaluation at the control's budget in every seed: said, not skipped
    missing = verdict(_report([0.5, 0.2, 0.8], None, None, [0.0, 0, 0], [1, 1, 1]), "E", CONTROLS, [])[1]
    assert "Left out: HASAC at its presets has no evaluation at 15000 env steps in every seed." in missing
    assert placement([0.7, 0.5, 0.9]) == "is not distinguishable from"  # an interval touching 1/2
    assert placement([0.3, 0.1, 0.5]) == "is not distinguishable from"


def test_cost_rows_project_a_run_from_median_interval_costs_by_hand(tmp_path):
    # OMAD's intervals (updates/s, other s per step) over two runs: medians 5 and 0.004; one stalled
    # interval (0.1 updates/s) does not move them. HASAC: one interval.
    costs = {
        "omad": [[(4.0, 0.004), (0.1, 0.004)], [(5.0, 0.003), (8.0, 0.005), (6.0, 0.004)]],
        "hasac": [[(10.0, 0.002)]],
    }
    rows = {row["algo"]: row for row in cost_rows(costs, {"omad": 500.0})}
    assert (rows["omad"]["runs"], rows["omad"]["intervals"]) == (2, 5)
    # 3M steps: 3e6 / 5 = 600,000 s of updates + 12,000 s of the rest = 170 h
    assert rows["omad"]["hours_here"] == pytest.approx(612_000 / 3600)
    assert rows["omad"]["hours_gpu"] == pytest.approx((6_000 + 12_000) / 3600)  # 3e6 / 500 s of updates
    assert rows["hasac"]["hours_here"] == pytest.approx(306_000 / 3600) and rows["hasac"]["hours_gpu"] is None
    line = verdict(_report([0.5, 0.1, 0.9], None, None, [0.0, 0, 0], [1.0, 1.0, 1.0]), "E", {}, list(rows.values()))[-1]
    assert "about 1,275 job-hours" in line  # 5 seeds x (170 + 85) h
    assert "one OMAD run would take 5.0 h instead of 170.0 h" in line

    check = tmp_path / "gpu.json"
    rows_json = [{"updates_per_s": 60.0}, {"updates_per_s": 720.0}, {"updates_per_s": None}]
    measured = {"env": "E", "denoising_steps": 8, "batch_size": 256, "rows": rows_json}
    check.write_text(json.dumps({"updates": measured}))
    assert gpu_update_rates(check, "E", {"denoising_steps": 8, "batch_size": 256}) == {"omad": 720.0}
    # measured at another K, batch or env: not this study's cost
    assert gpu_update_rates(check, "E", {"denoising_steps": 4, "batch_size": 256}) == {}
    assert gpu_update_rates(check, "E", {"denoising_steps": 8, "batch_size": 128}) == {}
    assert gpu_update_rates(check, "F", {"denoising_steps": 8, "batch_size": 256}) == {}
    assert gpu_update_rates(tmp_path / "missing.json", "E", {"denoising_steps": 8, "batch_size": 256}) == {}
