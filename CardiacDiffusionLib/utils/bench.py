"""Benchmark harness shared by ``scripts/bench_*``: time and peak memory of a call, and a JSON report.

A report holds the machine, the library versions, each measured case and its ratios to the
baseline measured in the same run (``baseline_time_over_case_time`` > 1: the case is faster).

    results = {"ours": measure(lambda: ours(x)), "reference": measure(lambda: ref(x))}
    write_report("bench.json", results, baseline_name="reference", config={"size": 64})
"""

from __future__ import annotations

import gc
import importlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .device import release_freed_memory
from .jsonfile import write_json


def _proc_status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, device: str | torch.device | None = None
) -> dict:
    """Median/min wall seconds of ``fn()`` over ``repeats`` runs after ``warmup``, and its peak memory.

    Peak memory: the process's peak RSS during the timed runs (Linux VmHWM, reset before; elsewhere
    ru_maxrss, which only grows, so run each case in its own process there; None on Windows), and
    ``torch.cuda.max_memory_allocated`` when ``device`` is CUDA.
    """
    device = torch.device(device) if device is not None else None
    for _ in range(warmup):
        fn()
    _sync(device)
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gc.collect()  # garbage freed during the timed runs would lower RSS under the mark and hide their peak
    release_freed_memory()  # memory the warm-up freed but glibc kept (dmcvr, LDM) would be reused unseen
    rss_before = _proc_status_mib("VmRSS")
    reset = _reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
                           "repeats": repeats}  # fmt: skip
    if reset and rss_before is not None:
        out["peak_rss_mib"] = _proc_status_mib("VmHWM")
        out["peak_rss_increase_mib"] = out["peak_rss_mib"] - rss_before
        out["peak_rss_kind"] = "VmHWM after clear_refs (peak RSS during the timed runs)"
    else:  # ru_maxrss: KiB on Linux, bytes on macOS; Windows has no ``resource`` module
        try:
            import resource
        except ImportError:
            resource = None
        scale = 1 / 2**20 if platform.system() == "Darwin" else 1 / 1024
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale if resource else None
        out["peak_rss_kind"] = "ru_maxrss (process lifetime peak)" if resource else "not measured (no resource module)"
    if device is not None and device.type == "cuda":
        out["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, RAM, torch threads and the GPU, if any."""
    from .device import physical_cores

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    info = {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "ram_gib": round(ram / 2**30, 2) if ram else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 2),
                       "count": torch.cuda.device_count(), "cuda": torch.version.cuda}  # fmt: skip
    return info


def versions() -> dict:
    """Versions of python and the libraries the figures depend on (None when not installed)."""
    out = {"python": platform.python_version()}
    for module, name in (("torch", "torch"), ("monai", "monai"), ("numpy", "numpy"), ("SimpleITK", "SimpleITK")):
        try:
            out[name] = getattr(importlib.import_module(module), "__version__", None) or "unknown"
        except ImportError:
            out[name] = None
    return out


def ratios(results: dict[str, dict], baseline_name: str) -> dict:
    """Per case: baseline time / case time and case peak memory / baseline peak memory."""
    base = results[baseline_name]
    out = {}
    for name, r in results.items():
        if name == baseline_name:
            continue
        entry = {"baseline_time_over_case_time": base["median_s"] / r["median_s"]}
        for key in ("peak_rss_increase_mib", "cuda_max_memory_allocated_mib"):
            if r.get(key) and base.get(key):
                entry[f"{key}_case_over_baseline"] = r[key] / base[key]
        out[name] = entry
    return out


def write_report(
    path: str | Path, results: dict[str, dict], baseline_name: str, config: dict | None = None,
    description: str = "", **extra: Any,
) -> dict:  # fmt: skip
    """Write the JSON report (machine, versions, results, baseline, ratios) and return it."""
    if baseline_name not in results:
        raise KeyError(f"baseline {baseline_name!r} is not among the results {sorted(results)}")
    report = {
        "benchmark": description,
        "config": config or {},
        "machine": machine_info(),
        "versions": versions(),
        "baseline": baseline_name,
        "results": results,
        "ratios": ratios(results, baseline_name),
        **extra,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    return report
