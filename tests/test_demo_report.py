"""The main job's report carries a per-phase breakdown of wall time, CPU time and peak RSS."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clif_core.demo import Report, _timed, _write_report
from clif_core.progress import SILENT


def test_report_lists_every_phase_with_time_and_peak_rss(tmp_path: Path) -> None:
    report = Report(model_note="test")

    def busy() -> tuple[list[int], str]:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.05:
            pass
        return [1, 2], "two things"

    assert _timed(report, "first phase", SILENT, busy) == [1, 2]
    _timed(report, "second <phase>", SILENT, lambda: (None, "nothing"))
    page = _write_report(tmp_path, report).read_text(encoding="utf-8")

    timing = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["timing"]
    phases = timing["phases"]
    assert [p["name"] for p in phases] == ["first phase", "second <phase>"]
    assert phases[0]["seconds"] >= 0.05 and phases[0]["cpu_seconds"] > 0 and phases[0]["summary"] == "two things"
    assert all(p["peak_rss_mib"] > 10 for p in phases)
    assert timing["total_seconds"] >= sum(p["seconds"] for p in phases)
    assert timing["peak_rss_mib"] == max(p["peak_rss_mib"] for p in phases)
    assert "<td>first phase</td>" in page and "second &lt;phase&gt;" in page
    assert "peak RSS" in page and f"{timing['peak_rss_mib']:.1f} MiB" in page
