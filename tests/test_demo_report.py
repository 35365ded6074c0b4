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


def test_the_report_says_what_the_oracle_read_alone_and_together(tmp_path: Path) -> None:
    """Renders stand in for samples, so the truth is known: the right character alone, the pair swapped."""
    import numpy as np
    import pytest
    from PIL import Image

    from clif_core.demo import _oracle_scores
    from clif_core.sandbox.characters import load_characters, render_character_images
    from clif_core.sandbox.oracle import DEFAULT_WEIGHTS
    from clif_core.sandbox.render import render_scene
    from clif_core.sandbox.world import compose

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no sandbox oracle weights in this checkout")
    characters = load_characters()
    a, b = characters.pairs[0]
    rng = np.random.default_rng(0)

    def alone(name: str) -> Image.Image:  # a training picture: the character in the centre
        return render_character_images(characters[name], n=1, seed=0)[0].pil()

    prompts = [f"<{a}> on the left and <{b}> on the right", f"<{b}> on the left and <{a}> on the right", f"<{a}>",
               f"<{b}>"]
    pair = render_scene(compose(rng, [characters[a].figure, characters[b].figure])).pil()  # a left, b right
    samples = {prompts[0]: [pair], prompts[1]: [pair],  # for the second prompt the pair is in the wrong places
               prompts[2]: [alone(a), alone(b)], prompts[3]: [alone(b)]}
    scores = _oracle_scores(characters, (a, b), prompts, samples)
    assert [(s["right"], s["of"]) for s in scores["prompts"].values()] == [(1, 1), (0, 1), (1, 2), (1, 1)]
    assert scores["prompts"][prompts[1]]["read"] == [f"{a} / {b}"]  # swapped: what it saw, slot by slot
    assert scores["prompts"][prompts[2]]["read"] == [a, b]  # the second sample of a shows b: leakage
    assert scores["verdict"] == (f"alone: {a} right in 1 of 2 samples, {b} in 1 of 1; together: both right and in "
                                 "their places in 1 of 2")
    report = Report(model_note="test", metrics={"oracle": scores})
    page = _write_report(tmp_path, report).read_text(encoding="utf-8")
    assert "Did the characters come out right?" in page and scores["verdict"] in page
