"""The benchmark's report logic, on the CPU: the sustained-run table and the power samples' window."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import bench_decode  # noqa: E402
from gpu_clock import SmClock  # noqa: E402

CEIL = {"gemm_tflops": 690.0, "gemm_sm_mhz": 1545.0, "gemm_watts": 699.0}


def sustained_case(**extra):
    r = {"grid": "upstream", "b": 128, "s_q": 2, "h_q": 128, "mean_seqlen": 8234.0, "sustained_us": 1000.0,
         "sustained_tflops": 600.0, "sustained_frac_gemm": 600.0 / 690.0, "sustained_sm_mhz": 1500.0,
         "sustained_sm_mhz_min": 1410.0, "sustained_watts": 695.0, "flashmla_us": 950.0}
    r.update(extra)
    return r


def test_sustained_table_reports_clock_power_and_ratio():
    lines = bench_decode.sustained_table([sustained_case(), {"grid": "serving"}], CEIL)
    assert "690 TFLOP/s at 1545 MHz, 699 W" in lines[1]
    rows = [line for line in lines if line.startswith("| upstream")]
    assert rows == ["| upstream | 128 | 2 | 128 | 8234 | 1000.0 | 600 | 87 | 1500 (1410) | 695 | 950.0 | 0.95 |"]


def test_sustained_table_absent_without_sustained_cases():
    assert bench_decode.sustained_table([{"grid": "upstream", "us": 3.0}], CEIL) == []


def test_sustained_table_unknown_power_and_anchor():
    lines = bench_decode.sustained_table([sustained_case(sustained_watts=None, flashmla_us=None)],
                                         {**CEIL, "gemm_watts": None})
    assert "1545 MHz, ? W" in lines[1]
    assert lines[-1].endswith("| 1500 (1410) | ? | – | – |")


def test_watts_between_takes_the_median_inside_the_window():
    clock = SmClock.__new__(SmClock)  # no sampler thread: samples given by hand
    clock.power_samples = [(0.5, 100.0), (1.0, 690.0), (1.5, 700.0), (2.0, 650.0), (3.0, 80.0)]
    assert clock.watts_between(1.0, 2.0) == 690.0
    assert clock.watts_between(5.0, 6.0) is None
