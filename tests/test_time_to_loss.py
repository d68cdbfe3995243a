"""benchmarks/time_to_loss.py: Student's t, the one-sided test and the table, on runs written by hand."""

import json
import os
import sys

import pytest

from conftest import REPO, run_script

# the script imports its sibling modern_recipe as a script does; benchmarks/ stays on sys.path only for that
# import (left there, its bottleneck.py shadowed the `bottleneck` package that pandas probes for, and the next
# test file on this worker that imported transformer_lens -> datasets -> pandas failed)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
try:
    from time_to_loss import below_target_p, student_t_cdf
finally:
    sys.path.remove(os.path.join(REPO, "benchmarks"))


@pytest.mark.parametrize("t,df,expected", [(-2.3, 4, 0.04146951855619118), (-5.0, 1, 0.0628329581890012),
                                           (0.7, 9, 0.7491904803919275), (3.0, 2, 0.9522670168666454)])
def test_student_t_matches_scipy(t, df, expected):
    assert student_t_cdf(t, df) == pytest.approx(expected, abs=1e-12)  # expected: scipy.stats.t.cdf(t, df)


def test_one_sided_test_and_table(tmp_path):
    assert below_target_p([1.5, 1.6, 1.55], 1.7) == pytest.approx(0.017549359322992373, abs=1e-12)  # scipy's
    curves = {"a": [[2.0, 1.9, 1.8], [2.0, 1.95, 1.82]], "b": [[1.9, 1.7, 1.6], [1.85, 1.75, 1.55]]}
    for name, runs in curves.items():
        for seed, losses in enumerate(runs):
            folder = tmp_path / name / f"seed_{seed}"
            folder.mkdir(parents=True)
            rows = [{"iter": 10 * i, "val_loss": v, "tokens": 100 * i, "train_s": 2.0 * i,
                     "elapsed_s": 3.0 * i} for i, v in enumerate(losses)]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_script("benchmarks/time_to_loss.py", "--table", str(tmp_path)).stdout
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()[2:]}
    # target: A's mean final loss 1.81; A reaches it in one seed of two (at 20), B in both at 10
    assert lines["A"][:3] == ["1/2", "20", "200"] and lines["B"][:4] == ["2/2", "10 +- 0", "100 +- 0", "2 +- 0"]
    assert lines["B"][4] == "1.575 +- 0.025" and float(lines["B"][5]) < 0.05 < float(lines["A"][5])
    missing = run_script("benchmarks/time_to_loss.py", "--table", str(tmp_path / "none"), check=False)
    assert missing.returncode == 1 and "holds no runs" in missing.stderr
