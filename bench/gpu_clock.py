"""The GPU's SM clock and power draw, sampled in the background so a timed window can report the
clock it ran at and the power it drew.

Long tensor-core-heavy runs hit the H200's 700 W cap and the SM clock falls (1980 MHz down to
~1400 MHz), so compute-bound figures are only meaningful next to the clock and power they ran at.
"""
import statistics
import subprocess
import threading
import time

import torch


def _reader(device, torch_query, nvidia_smi_field):
    """A function returning one GPU reading (or None), or None when no reader works here:
    torch_query(device) (torch's own NVML query: fast, and it maps the CUDA device to the NVML
    one), else nvidia-smi's `nvidia_smi_field`."""
    try:
        torch_query(device)
        return lambda: torch_query(device)
    except Exception:
        pass
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    selector = f"GPU-{uuid}" if uuid else str(device)
    cmd = ["nvidia-smi", f"--query-gpu={nvidia_smi_field}", "--format=csv,noheader,nounits", "-i", selector]

    def nvidia_smi():
        try:
            return float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.split()[0])
        except Exception:
            return None

    return nvidia_smi if nvidia_smi() else None


def _clock_reader(device):
    """SM clock in MHz."""
    return _reader(device, torch.cuda.clock_rate, "clocks.sm")


def _power_reader(device):
    """Board power in W (torch reports milliwatts)."""
    return _reader(device, lambda d: torch.cuda.power_draw(d) / 1000.0, "power.draw")


class SmClock:
    """Samples the SM clock and the power draw every `period` seconds on a daemon thread (NVML
    calls release the GIL)."""

    def __init__(self, device, period=0.05):
        self.read = _clock_reader(device)
        self.read_watts = _power_reader(device)
        self.samples = []  # (time.perf_counter(), MHz)
        self.power_samples = []  # (time.perf_counter(), W)
        self._stop = threading.Event()
        if self.read or self.read_watts:
            threading.Thread(target=self._loop, args=(period,), daemon=True).start()

    def _loop(self, period):
        while not self._stop.is_set():
            mhz = self.read() if self.read else None
            if mhz:
                self.samples.append((time.perf_counter(), mhz))
            watts = self.read_watts() if self.read_watts else None
            if watts:
                self.power_samples.append((time.perf_counter(), watts))
            self._stop.wait(period)

    def stop(self):
        self._stop.set()

    def between(self, t0, t1):
        """(median, min) MHz of the samples taken in [t0, t1] (perf_counter times); one fresh
        sample if the window was too short to catch any; (None, None) without a reader."""
        mhz = [m for t, m in self.samples if t0 <= t <= t1]
        if not mhz and self.read:
            mhz = [m for m in [self.read()] if m]
        return (statistics.median(mhz), min(mhz)) if mhz else (None, None)

    def watts_between(self, t0, t1):
        """Median W of the power samples taken in [t0, t1], or None when there is none (NVML's
        reading is an average over a short window: only windows of a few hundred ms mean much)."""
        watts = [w for t, w in self.power_samples if t0 <= t <= t1]
        return statistics.median(watts) if watts else None
