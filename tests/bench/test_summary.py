"""``make bench``'s comparable report: a run's figures are kept and shown beside the baseline's."""

import json

from bench import summary
from bench.report import Figure, record


def test_a_run_is_kept_and_shown_beside_the_baseline(tmp_path, capsys):
    results, baseline = tmp_path / "results.json", tmp_path / "baseline.json"
    baseline.write_text(
        json.dumps(
            {
                "Ingest": {
                    "ratio": {
                        "value": "0.46",
                        "unit": "",
                        "when": "2026-12-01",
                        "commit": "abc",
                        "load": "0.2",
                    },
                    "dropped since": {"value": "7", "unit": "ms", "when": "2026-12-01", "load": "0.3"},
                }
            }
        )
    )
    record(
        "Ingest", [Figure("ratio", "0.91", target="≥ 0.9", met=True, peer="COPY 80,000/s")], 0.5, 1.5, results
    )
    record("Pages", [Figure("p95", "120", "ms", "≤ 100 ms", False)], 0.1, 0.2, results)
    # a later run of one benchmark replaces its own figures and keeps the other's
    record(
        "Ingest", [Figure("ratio", "0.93", target="≥ 0.9", met=True, peer="COPY 81,000/s")], 0.4, 1.2, results
    )

    assert summary.main(["--results", str(results), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    ratio = next(line for line in out.splitlines() if line.startswith("ratio"))
    assert "0.46" in ratio and "0.93" in ratio and "0.91" not in ratio
    assert "COPY 81,000/s" in ratio and "met" in ratio and "0.2 / 0.4 → 1.2" in ratio
    assert "NOT met" in next(line for line in out.splitlines() if line.startswith("p95"))
    assert "not measured since" in next(line for line in out.splitlines() if line.startswith("dropped since"))

    assert summary.main(["--results", str(results), "--baseline", str(baseline), "--save-baseline"]) == 0
    saved = json.loads(baseline.read_text())
    assert saved["Ingest"]["ratio"]["value"] == "0.93" and saved["Ingest"]["dropped since"]["value"] == "7"
    assert saved["Pages"]["p95"]["met"] is False


def test_an_unreadable_results_file_is_said_and_started_afresh(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text('{"Ingest": {"ratio": ')  # a run killed while writing
    assert summary.main(["--results", str(results), "--baseline", str(tmp_path / "none.json")]) == 0
    assert "no figures read from" in capsys.readouterr().err
    record("Ingest", [Figure("ratio", "0.5")], 0.1, 0.2, results)
    assert json.loads(results.read_text())["Ingest"]["ratio"]["value"] == "0.5"
