"""``benchmarks.longest``: the quadratic memory fit and the length where it meets a budget."""
from __future__ import annotations

import json

import pytest

from benchmarks.longest import extrapolate, fit_quadratic, run, solve_length


def test_fit_is_exact_through_three_points_and_solves_the_budget():
    # y = 1000 + 2 L + 0.001 L^2 at L = 1024, 2048, 4096
    xs = [1024, 2048, 4096]
    a, b, c = fit_quadratic(xs, [1000 + 2 * x + 0.001 * x * x for x in xs])
    assert (a, b, c) == pytest.approx((1000, 2, 0.001), rel=1e-6)
    # 1000 + 2 L + 0.001 L^2 = 25000  ->  L = (-2 + sqrt(4 + 0.004 * 24000)) / 0.002 = 4000
    assert solve_length(1000, 2, 0.001, 25000) == pytest.approx(4000)
    assert solve_length(1000, 2, 0.0, 3000) == pytest.approx(1000)
    assert solve_length(1000, 0, 0.0, 3000) is None


def test_run_fits_saved_points_without_probing(tmp_path):
    pts = tmp_path / "pts"
    pts.mkdir()
    for side, slope in (("prefopt[shared_prompt]", 1.0), ("trl", 4.0)):
        for n in (1024, 2048):
            (pts / f"{side}_{n}.json").write_text(json.dumps({"peak_total_mb": 1000 + slope * n,
                                                              "peak_step_mb": slope * n}))
    out = tmp_path / "r.json"
    r = run(["--lengths", "1024,2048", "--budget-gib", "1", "--points-dir", str(pts), "--out", str(out)])
    # linear fits: prefopt 1000 + L = 1024 MB at L = 24; trl 1000 + 4 L at L = 6
    assert r["sides"]["prefopt[shared_prompt]"]["longest_extrapolated"] == pytest.approx(24)
    assert r["sides"]["trl"]["longest_extrapolated"] == pytest.approx(6)
    assert r["ratio_vs_trl"] == pytest.approx(4) and json.loads(out.read_text())["ratio_vs_trl"] == pytest.approx(4)


def test_concave_probes_use_the_two_longest():
    """Growth that slows (a concave fit): the line through (8192, 5600) and (16384, 6000) has slope
    400 / 8192 MB per token and meets 6400 MB at 16384 + 400 / (400 / 8192) = 24576."""
    assert fit_quadratic([2048, 4096, 8192, 16384], [3000, 5500, 5600, 6000])[2] < 0
    r = extrapolate([2048, 4096, 8192, 16384], [3000, 5500, 5600, 6000], 6400)
    assert r["longest_extrapolated"] == pytest.approx(24576)
    assert r["fit_mb"]["b_per_token"] == pytest.approx(400 / 8192) and "8192 and 16384" in r["note"]
    convex = extrapolate([1024, 2048, 4096], [1000 + 2 * x + 0.001 * x * x for x in (1024, 2048, 4096)], 25000)
    assert convex["longest_extrapolated"] == pytest.approx(4000) and convex["note"].startswith("quadratic")
    flat = extrapolate([1024, 2048, 4096], [3000, 5500, 5400], 24000)
    assert flat["longest_extrapolated"] is None and "no growth" in flat["note"]


def test_tensor_probes_fit_each_steady_phase_and_the_first_to_meet_the_budget_bounds(tmp_path):
    """Steady phase = the side's median set-up RSS + phase peak (+ the optimizer state left at the end, for the two
    backward phases). Ours: set-up 1000, state 200; head phase 300 + 0.1 L, layers 100 + 0.2 L, optimizer
    step 500 flat -> layers meets 2048 MB first: 1000 + 200 + 100 + 0.2 L = 2048 at L = 3740; the head at
    1000 + 200 + 300 + 0.1 L = 2048 at L = 5480. TRL: head 700 + 0.1 L meets 2048 at L = 1480 first."""
    pts = tmp_path / "pts"
    pts.mkdir()
    shapes = {"prefopt[shared_prompt]": (300, 0.1, 100, 0.2), "trl": (700, 0.1, 100, 0.2)}
    for side, (h0, h1, l0, l1) in shapes.items():
        for n, setup in ((1000, 990.0), (2000, 1000.0), (3000, 1100.0)):  # median set-up: 1000
            phases = {"forward_backward": {"peak_mb": h0 + h1 * n}, "layers_backward": {"peak_mb": l0 + l1 * n},
                      "optimizer_step": {"peak_mb": 500.0}}
            (pts / f"{side}_{n}.json").write_text(json.dumps({
                "setup_rss_mb": setup, "tensor_end_of_step_mb": 200.0, "tensor_phases": phases,
                "peak_total_mb": 0.0}))
    r = run(["--lengths", "1000,2000,3000", "--budget-gib", "2", "--points-dir", str(pts), "--out",
             str(tmp_path / "r.json"), "--tensor-memory"])
    ours, trl = r["sides"]["prefopt[shared_prompt]"], r["sides"]["trl"]
    assert ours["bounding_phase"] == "layers_backward" and ours["longest_extrapolated"] == pytest.approx(3740)
    assert ours["phases"]["forward_backward"]["longest_extrapolated"] == pytest.approx(5480)
    assert ours["phases"]["optimizer_step"]["longest_extrapolated"] is None  # flat: never meets it
    assert trl["bounding_phase"] == "forward_backward" and trl["longest_extrapolated"] == pytest.approx(1480)
    assert r["ratio_vs_trl"] == pytest.approx(3740 / 1480)
