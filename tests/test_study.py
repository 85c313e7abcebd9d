"""The sample-efficiency study's headline table: its rows by hand, and the README holds the current one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.sample_efficiency import CODE_COMMIT_FILE, RESULTS
from bench.study_report import HEADLINE_END, HEADLINE_START, headline_table

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
