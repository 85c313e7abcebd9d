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
        "hasac (control)": {"budget": 15000, "seeds": [0, 1], "final_return_iqm": [hasac_control, 0.0, 0.0]},
    }
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
        "other_mode": {
            "mode": "stochastic",
            "envs": {"E": {"probability_of_improvement": {"omad-gaussian": p_gauss_other}}},
        },
        "at": {
            "E": {
                "omad": {"deterministic": {"15000": [500.0, 0, 0]}},
                "hasac": {"deterministic": {"15000": [hasac_at_15k, 0, 0]}},
            }
        },
    }


def test_verdict_reads_placement_presets_share_and_ratios_by_hand():
    controls = {"hasac": "hasac (control)"}
    report = _report([0.83, 0.33, 1.0], [0.9, 0.6, 1.0], -100.0, 380.0, [1.18, 6.0, 1.03])
    lines = verdict(report, "E", controls, [])
    assert len(lines) == 3
    # the interval [0.33, 1.00] holds 1/2: level; the other mode's [0.6, 1.0] excludes it: above
    assert "OMAD ends **level with** OMAD-Gaussian in the deterministic mode: IQM 4800 [4500, 5100]" in lines[0]
    assert "In the stochastic mode it ends above it (P = 0.90 [0.60, 1.00])" in lines[0]
    # OMAD's lead at 15k is 500 - (-100) = 600; OMAD's settings add 380 - (-100) = 480: 80% of it
    assert "HASAC scores -100 at its presets and 380 at OMAD's settings, where OMAD scores 500" in lines[1]
    assert "close 80% of OMAD's lead of 600" in lines[1]
    assert "hasac 6.00x (its own curve first reaches its final return at 2500 of 15000 steps)" in lines[2]
    assert "no ratio reaches it; only baselines at their presets do (hasac)." in lines[2]

    below = _report([0.1, 0.0, 0.4], [0.5, 0.2, 0.8], 200.0, 150.0, [None, 1.2, 2.6])
    lines = verdict(below, "E", controls, [])
    assert "ends **below** OMAD-Gaussian" in lines[0] and "stochastic mode it ends level with it" in lines[0]
    assert "do not help HASAC, so its presets do not explain OMAD's lead of 300" in lines[1]
    assert "omad-gaussian not reached (< 1.00x)" in lines[2]
    assert "hasac (control) reaches the paper's range" in lines[2]
    assert placement([0.7, 0.5, 0.9]) == "level with"  # an interval touching 1/2 does not exclude it


def test_cost_rows_project_a_run_from_median_costs_by_hand(tmp_path):
    # medians: OMAD 5 updates/s and 0.004 s per step; HASAC 10 updates/s and 0.002 s per step
    costs = {"omad": [(4.0, 0.004), (5.0, 0.003), (8.0, 0.005)], "hasac": [(10.0, 0.002)]}
    rows = {row["algo"]: row for row in cost_rows(costs, {"omad": 500.0})}
    # 1M steps: 1e6 / 5 = 200,000 s of updates + 4,000 s of the rest = 56.67 h
    assert rows["omad"]["hours_here"] == pytest.approx(204_000 / 3600)
    assert rows["omad"]["hours_gpu"] == pytest.approx((2_000 + 4_000) / 3600)  # 1e6 / 500 s of updates
    assert rows["hasac"]["hours_here"] == pytest.approx(102_000 / 3600) and rows["hasac"]["hours_gpu"] is None
    line = verdict(_report([0.5, 0.1, 0.9], [0.5, 0.1, 0.9], 0.0, 0.0, [1.0, 1.0, 1.0]), "E", {}, list(rows.values()))[
        -1
    ]
    assert "about 425 job-hours" in line  # 5 seeds x (56.67 + 28.33) h
    assert "one OMAD run would take 1.7 h instead of 56.7 h" in line

    check = tmp_path / "gpu.json"
    rows_json = [{"updates_per_s": 60.0}, {"updates_per_s": 720.0}, {"updates_per_s": None}]
    check.write_text(json.dumps({"updates": {"denoising_steps": 8, "rows": rows_json}}))
    assert gpu_update_rates(check, 8) == {"omad": 720.0}
    assert gpu_update_rates(check, 4) == {}  # measured at another K: not this study's cost
    assert gpu_update_rates(tmp_path / "missing.json", 8) == {}
