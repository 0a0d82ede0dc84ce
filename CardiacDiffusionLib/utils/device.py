"""Device policy, in one place: which device to use, how many CPU threads, and what to do on out-of-memory.

CPU threads: the user's OMP_NUM_THREADS, else the physical cores less those other processes keep busy when the
command starts (:func:`auto_cpu_threads`, :func:`thread_policy`).

``--device auto|cpu|cuda|mps`` (or ``cuda:N``) everywhere; ``auto`` picks CUDA, then MPS, then CPU.
Inference runs batches of slices/volumes through :func:`run_batched`, which halves the batch on
an out-of-memory error down to 1 and then stops with an :class:`InputError` saying what to do.
:func:`available_memory` is what a command may allocate on this machine (checked before a large output).
:func:`keep_freed_memory` stops glibc from paging CPU tensors in afresh at every network call (DDIM loops: dmcvr, LDM).
torch is imported where used, so the memory check costs the classical methods no torch import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, TypeVar

from ..errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
T = TypeVar("T")


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def device_name(name: str | torch.device | None = "auto") -> str:
    """``name`` checked as a ``--device`` value (auto, cpu, cuda, cuda:N, mps) without importing torch."""
    text = str(name or "auto").strip().lower()
    kind, _, index = text.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"--device {name}: unknown device; use one of auto, cpu, cuda, cuda:N, mps")
    return text


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name``, or an InputError when it cannot be used here."""
    text = device_name(name)
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "torch built for CPU" if torch.version.cuda is None else "no CUDA GPU or driver found"
            raise InputError(
                f"CUDA not available on this machine ({why}): use --device cpu or install a CUDA build of torch"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)")
    if kind == "mps" and not _mps_available():
        raise InputError("MPS (Apple GPU) not available on this machine: use --device cpu")
    return torch.device(text)


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads not counted)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    try:  # Linux: unique (physical id, core id) pairs; psutil is not a dependency
        physical = "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical = value.strip()
                elif key.strip() == "core id":
                    cores.add((physical, value.strip()))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def omp_threads() -> int | None:
    """OMP_NUM_THREADS as a thread count, None when unset or empty. A value that is not a whole number above 0
    (``abc``, ``0``, ``-2``) is said in one warning line on stderr and dropped from the environment: OpenMP
    (libgomp) would print its own bare 'Invalid value' line when torch loads, then use every core, as we do.
    Call it before torch is imported (the CLI does) to keep that line away; an OpenMP list ``4,2`` gives 4."""
    import sys

    raw = os.environ.get("OMP_NUM_THREADS")
    if raw is None:
        return None
    count = thread_count(raw)
    if count is not None:
        return count
    del os.environ["OMP_NUM_THREADS"]  # child processes (data loaders, the Slicer job's command) inherit the fix
    if raw.strip():
        print(f"warning: OMP_NUM_THREADS={raw!r} is not a whole number of threads above 0; ignored (torch's OpenMP "
              f"ignores it too): {physical_cores()} CPU threads, this machine's physical cores, are used; set e.g. "
              "OMP_NUM_THREADS=1, or unset it", file=sys.stderr)  # fmt: skip
    return None


def thread_count(value: str | None) -> int | None:
    """An OMP_NUM_THREADS value as a thread count (an OpenMP list ``4,2``: its first level); None when it is not a
    whole number above 0, or unset."""
    text = (value or "").strip().split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def busy_cpus(interval: float = 0.1) -> float | None:
    """CPUs (of those this process may run on) that other processes keep busy now: /proc/stat sampled over
    ``interval`` seconds, while this process sleeps; None where /proc/stat cannot be read (macOS, Windows).
    Instantaneous, unlike the load average (a 1-minute mean that lags a minute behind a job's start and end)."""
    import time

    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def ticks() -> tuple[int, int]:
        busy = total = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if not name[3:].isdigit():
                    break
                if allowed is not None and int(name[3:]) not in allowed:
                    continue
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(values)
                busy += sum(values) - values[3] - values[4]
        return busy, total

    try:
        busy0, total0 = ticks()
        time.sleep(interval)
        busy1, total1 = ticks()
    except (OSError, ValueError, IndexError):
        return None
    cpus = len(allowed) if allowed is not None else (os.cpu_count() or 1)
    return cpus * (busy1 - busy0) / (total1 - total0) if total1 > total0 else None


def thread_policy(busy: float | None, cores: int, env: Mapping[str, str]) -> tuple[int, dict[str, str], str]:
    """CPU threads for torch given ``busy`` CPUs taken by other processes (:func:`busy_cpus`), this machine's
    physical ``cores`` and the user's environment: (threads, environment variables to set, the choice in words).

    A user's OMP_NUM_THREADS is kept. Else all cores, less those other work takes (a half-busy CPU counts as
    taken), at least 1: libgomp's threads spin while waiting, and on a core another process needs they stall
    each other (an LDM sample 10-20x slower on 2 threads than on 1, 2 cores under load; README). OMP_WAIT_POLICY
    is left alone: PASSIVE ends the stall but is up to 1.5x slower than 1 thread under load, 1.6-2x slower than 2
    threads on a quiet machine."""
    user = thread_count(env.get("OMP_NUM_THREADS"))
    if user is not None:
        return user, {}, f"{user} CPU threads (OMP_NUM_THREADS)"
    if busy is None:
        return cores, {}, f"{cores} CPU threads (physical cores; the load could not be read)"
    threads = max(1, min(cores, cores - int(busy + 0.5)))
    said = f"{threads} CPU threads ({cores} physical cores, {busy:.1f} CPUs busy with other work)"
    return threads, ({"OMP_NUM_THREADS": str(threads)} if threads < cores else {}), said


def auto_cpu_threads() -> str | None:
    """Apply :func:`thread_policy` before torch loads (the CLI calls it first): fewer threads when other work
    keeps cores busy, set as OMP_NUM_THREADS so that torch's OpenMP and child processes start with it; returns the
    choice in words. Nothing is done (None) once torch is loaded: an in-process caller (a test, Slicer's Python)
    keeps its own threads."""
    import sys

    if "torch" in sys.modules:
        return None
    _, env, said = thread_policy(busy_cpus(), physical_cores(), os.environ)
    os.environ.update(env)
    return said


def mps_cpu_fallback() -> bool:
    """On macOS, before torch loads: PYTORCH_ENABLE_MPS_FALLBACK=1 (unless the user set it), so an operation the
    installed torch lacks on the Apple GPU (e.g. 3D ``grid_sample``, SADIR's warp, before torch 2.9) runs on the
    CPU instead of ending an ``auto``/``mps`` run; torch reads it only when it loads. True when set here."""
    import sys

    if sys.platform != "darwin" or "torch" in sys.modules or "PYTORCH_ENABLE_MPS_FALLBACK" in os.environ:
        return False
    os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = "1"
    return True


def before_torch_loads() -> None:
    """What a command that will load torch sets first (both command lines call it): CPU threads by the machine's
    load (:func:`auto_cpu_threads`) and, on macOS, the CPU fallback of the Apple GPU (:func:`mps_cpu_fallback`)."""
    auto_cpu_threads()
    mps_cpu_fallback()


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads: OMP_NUM_THREADS when set (by the user, or by :func:`auto_cpu_threads` on a
    busy machine; :func:`omp_threads`), else the physical cores."""
    threads = omp_threads() or physical_cores()
    import torch

    torch.set_num_threads(threads)
    return threads


def prepare_device(name: str | torch.device | None = "auto") -> torch.device:
    """:func:`resolve_device`, with the CPU thread count set when it is the CPU."""
    device = resolve_device(name)
    if device.type == "cpu":
        configure_cpu_threads()
    return device


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and the MPS/CPU 'out of memory' RuntimeErrors."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _free_cache(device: torch.device) -> None:
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and _mps_available():
        torch.mps.empty_cache()


def _oom_message(device: torch.device, what: str) -> str:
    return (
        f"out of memory at batch size 1 on {device}: use --device cpu or fewer --steps/smaller {what} "
        "(or close other programs using the GPU)"
    )


def with_oom_retry(
    run: Callable[[int], T], batch_size: int, device: str | torch.device = "cpu", what: str = "images"
) -> T:
    """``run(batch_size)``; on out-of-memory free the cache and retry with half the batch, down to 1."""
    import torch

    device = torch.device(device)
    size = _batch_size(batch_size)
    while True:
        try:
            return run(size)
        except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            _free_cache(device)
            if size == 1:
                raise InputError(_oom_message(device, what)) from None
            size //= 2


def run_batched(
    fn: Callable[[Sequence | torch.Tensor], Sequence | torch.Tensor],
    items: Sequence | torch.Tensor,
    batch_size: int,
    device: str | torch.device = "cpu",
    what: str = "images",
) -> list | torch.Tensor:
    """``fn`` over ``items`` in batches, results in order; halves the batch on out-of-memory.

    ``items``: a tensor (batched along dim 0) or a sequence; ``fn`` gets a slice of it and returns
    a tensor (concatenated along dim 0) or a sequence (joined). Batches done are kept; once a
    smaller batch fits it is kept for the rest. At batch size 1 an out-of-memory is an InputError.
    """
    import torch

    device = torch.device(device)
    size, start, outputs = _batch_size(batch_size), 0, []
    while start < len(items):
        try:
            out = fn(items[start : start + size])
        except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            _free_cache(device)
            if size == 1:
                raise InputError(_oom_message(device, what)) from None
            size //= 2
            continue
        outputs.append(out)
        start += size
    if outputs and isinstance(outputs[0], torch.Tensor):
        return torch.cat(outputs, dim=0)
    return [x for out in outputs for x in out]


def _batch_size(value) -> int:
    """``value`` as a batch size: a whole number >= 1, else an InputError (0 or -3 ran silently as 1)."""
    try:
        whole = not isinstance(value, bool) and float(value).is_integer() and int(value) >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise InputError(f"batch size {value}: give a whole number of at least 1")
    return int(value)


def available_memory() -> int | None:
    """Bytes this process may still allocate: the system's MemAvailable, less where a cgroup (container)
    limit leaves less; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            if cap.isdigit() and int(cap) < 2**60:  # "max" or a huge number: no limit
                found.append(max(0, int(cap) - int(Path("/sys/fs/cgroup", usage).read_text())))
                break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


#: glibc malloc settings of :func:`keep_freed_memory`: blocks up to MMAP from the heap, and freed heap kept up to TRIM
KEEP_MMAP_THRESHOLD, KEEP_TRIM_THRESHOLD = 256 << 20, 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next tensor instead of giving it back to the OS (Linux; True
    when set). By default it maps large blocks (over 128 KiB, the threshold rising up to 32 MiB) afresh and trims
    the heap's free top, so a network's CPU activations (a DDIM loop: the same sizes at every step) are paged in and
    zeroed by the kernel again at each call. Peak RSS about the same or up to ~20 % more (LDM 64^3); the process
    keeps it until it exits (or :func:`release_freed_memory`).
    Process-wide, set once; elsewhere (macOS, Windows, musl) nothing is done."""
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mapped = libc.mallopt(m_mmap_threshold, KEEP_MMAP_THRESHOLD)
    return bool(mapped) & bool(libc.mallopt(m_trim_threshold, KEEP_TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Give the freed memory glibc keeps (:func:`keep_freed_memory`) back to the OS (``malloc_trim``; True when
    done): a benchmark measuring the peak memory of its timed runs calls it first, or memory an earlier run left
    in the heap would be reused unseen and the peak read as no increase."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def _glibc():
    """The C library when it is glibc (Linux), else None (musl has a mallopt that does nothing)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
