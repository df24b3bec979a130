"""What every benchmark figure carries so it can be trusted: the machine, the load around it,
and whether it was taken quietly enough to publish.

    from benchmeta import Watch, machine

    with Watch() as w:
        figures = run_my_benchmark()
    figures["meta"] = w.meta()          # machine, load before/after, others' CPU use, verdict
    if not figures["meta"]["published"]:
        ...                              # keep it out of RESULTS.md (it says why)

A figure is taken "under load" when the 1-minute load average before the run is above the
number of cores, or when other processes used more than a quarter of the cores (on average)
while it ran. The load average *after* a run is recorded too, but it includes the benchmark's
own threads (a 2-thread model run alone lifts it to ~2 on 2 cores), so it cannot tell a quiet
run from a loaded one by itself; the CPU time of everyone else can: /proc/stat's busy time
minus this process's and its children's own.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from contextlib import suppress

OTHERS_SHARE_LIMIT = 0.25  # of the cores: more than this used by other processes is "load"
NOT_PUBLISHED = "under load, not published"


def cores() -> int:
    """CPU cores this process may run on."""
    with suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine() -> str:
    """CPU model, cores, OS, Python; and the GPU where torch sees one (without importing torch
    when it is not already imported)."""
    cpu = platform.processor()
    with suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    out = f"{cpu}, {cores()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    gpu = gpu_name()
    return f"{out}, {gpu}" if gpu else out


def gpu_name() -> str | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    with suppress(Exception):
        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}"
    return None


def loadavg() -> tuple[float, float, float]:
    """(1, 5, 15)-minute load averages; zeros where the system does not say."""
    with suppress(OSError, ValueError):
        with open("/proc/loadavg") as f:
            a, b, c = f.read().split()[:3]
            return float(a), float(b), float(c)
    with suppress(OSError, AttributeError):
        return os.getloadavg()
    return 0.0, 0.0, 0.0


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy (not idle/iowait) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def wait_until_quiet(threshold: float = 1.5, max_wait: float = 300.0, poll: float = 10.0) -> float:
    """Wait (up to ``max_wait`` seconds) for the 1-minute load average to fall below
    ``threshold``; returns the load average at the end."""
    deadline = time.monotonic() + max_wait
    while loadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(poll)
    return loadavg()[0]


class Watch:
    """Load average before and after a block, and the CPU other processes used during it."""

    def __enter__(self) -> Watch:
        self.before = loadavg()
        self._t = time.monotonic()
        self._busy = _busy_seconds()
        self._own = _own_seconds()
        self.after = self.before
        self.seconds = 0.0
        self.others_cores: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self._t
        busy = _busy_seconds()
        own = _own_seconds() - self._own
        if busy is not None and self._busy is not None and self.seconds > 0:
            self.others_cores = max(0.0, (busy - self._busy - own) / self.seconds)
        self.after = loadavg()

    def meta(self) -> dict:
        return flag_if_loaded({"machine": machine()}, self.before, self.after, self.others_cores)


def flag_if_loaded(figures: dict, before: tuple[float, ...], after: tuple[float, ...],
                   others_cores: float | None = None, n_cores: int | None = None) -> dict:
    """``figures`` with ``load`` (before/after/cores/others' CPU) and ``published``; figures
    taken under load also get ``flag`` = "under load, not published" and the reason."""
    n = n_cores or cores()
    figures["load"] = {"before_1_5_15": [round(x, 2) for x in before],
                       "after_1_5_15": [round(x, 2) for x in after], "cores": n,
                       "others_cpu_cores_during_run": None if others_cores is None else round(others_cores, 2)}
    why = []
    if before[0] > n:
        why.append(f"1-minute load average {before[0]:.2f} before the run, above {n} cores")
    if others_cores is not None and others_cores > OTHERS_SHARE_LIMIT * n:
        why.append(f"other processes used {others_cores:.2f} cores on average during the run")
    figures["published"] = not why
    if why:
        figures["flag"] = f"{NOT_PUBLISHED}: " + "; ".join(why)
    return figures
