"""Helpers shared by the benchmark scripts: memory readings, one measured call, machine facts.

Standard library only: the peer workers import it inside an environment without steerlab.

Example::

    from benchlib import measure
    rec = measure(lambda: sum(range(10**6)))
    rec["time_s"], rec["peak_rss_mb"]
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEERLAB_SHARED") or REPO.parent / "shared")  # models and data: ../shared
RESULTS = REPO / "benchmarks" / "results"


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size (MiB), Linux only."""
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def maxrss_mb() -> float:
    """Process peak RSS since start (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def trim_heap() -> None:
    """Give memory that glibc's malloc keeps after frees back to the OS (Linux/glibc only), so that
    one call's peak is less inflated by what earlier calls left resident."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_since_reset_mb() -> float | None:
    """VmHWM (MiB): peak RSS since the last :func:`reset_peak` (or since start)."""
    kb = _status_kb("VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def measure(fn: Callable[[], Any]) -> dict[str, Any]:
    """Call ``fn`` once and return its wall time and memory.

    Before the call the heap is trimmed and the kernel's RSS high-water mark reset, so
    ``peak_rss_mb`` is the process peak while ``fn`` ran (model weights included) and
    ``rss_before_mb`` what was resident just before; ``result`` is what ``fn`` returned.
    """
    gc.collect()
    trim_heap()
    before = rss_mb()
    can_reset = reset_peak()
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    peak = peak_since_reset_mb() if can_reset else maxrss_mb()
    return {"time_s": round(dt, 4), "peak_rss_mb": peak, "rss_before_mb": before, "result": result}


def ratio(a: float, b: float) -> float:
    """``a / b`` rounded to 3 places (``nan`` when ``b`` is not positive)."""
    return round(a / b, 3) if b > 0 else float("nan")


# --------------------------------------------------------------------------- worker processes
def run_worker(cmd: list[str], result: Path, what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker process that writes its JSON result to ``result``; return it with
    ``process_wall_s`` added. Exits with the worker's stderr tail if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"{what} failed (exit {proc.returncode})")
    out: dict[str, Any] = json.loads(result.read_text())
    out["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


# --------------------------------------------------------------------------- results
def result_header(
    benchmark: str, started: float, reps: int, config: dict[str, Any], machine: dict[str, Any]
) -> dict[str, Any]:
    """The first keys of every result JSON: which benchmark, when (local time), repetitions,
    configuration and machine."""
    return {
        "benchmark": benchmark,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "reps": reps,
        "config": config,
        "machine": machine,
    }


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file beside it, then renamed), so
    an interrupted run never leaves a truncated result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- machine
def git(*args: str) -> str | None:
    """Output of a git command in the repository, ``None`` if it fails."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def version(pkg: str) -> str | None:
    """Installed version of ``pkg`` in this interpreter, ``None`` if absent."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str | None:
    """The CPU model from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(packages: tuple[str, ...] = ("torch", "transformers", "steerlab")) -> dict[str, Any]:
    """Platform, CPU, versions of ``packages``, git commit (and whether the tree was dirty), load."""
    status = git("status", "--porcelain")
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
    }
    info.update({pkg: version(pkg) for pkg in packages})
    info.update(
        git_commit=git("rev-parse", "HEAD"),
        git_dirty=None if status is None else bool(status),
        loadavg_start=loadavg(),
    )
    return info


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line on stderr with the seconds since start."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)
