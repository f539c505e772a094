"""Device planning: which GPUs or CPU cores each local worker owns.

Pure functions (no torch): ``--cuda --num-cuda-devs N`` on G visible GPUs gives
G // N workers, worker k owning GPUs kN ... kN+N-1; ``--cpu --workers K``
divides the machine's cores into K disjoint sets. A worker's GPUs are made
visible to it through ``CUDA_VISIBLE_DEVICES`` before torch starts there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


class PlanError(ValueError):
    """The requested layout cannot be made on this host."""


@dataclass(frozen=True)
class Placement:
    """Where one worker runs."""

    device: str  # "cpu" or "cuda"
    gpus: tuple[str, ...] = ()  # entries for CUDA_VISIBLE_DEVICES
    threads: int | None = None
    cores: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.device == "cuda":
            return f"GPU {','.join(self.gpus)}"
        cores = ",".join(str(c) for c in self.cores) if self.cores else "any"
        threads = f"{self.threads} threads" if self.threads else "default threads"
        return f"CPU cores [{cores}] ({threads})"


def plan_gpu_groups(visible: list[str], per_group: int) -> list[Placement]:
    """Split visible GPUs into consecutive groups of ``per_group``."""
    if per_group < 1:
        raise PlanError("--num-cuda-devs must be at least 1")
    if not visible:
        raise PlanError("--cuda was given but no GPU is visible (check drivers / CUDA_VISIBLE_DEVICES)")
    if len(visible) < per_group:
        raise PlanError(
            f"--num-cuda-devs {per_group} needs {per_group} GPUs but only {len(visible)} are visible"
        )
    groups = len(visible) // per_group
    return [
        Placement("cuda", tuple(visible[k * per_group : (k + 1) * per_group])) for k in range(groups)
    ]


def plan_cpu_workers(workers: int, cores: list[int]) -> list[Placement]:
    """K workers with disjoint core sets (shared round-robin if K > cores)."""
    if workers < 1:
        raise PlanError("--workers must be at least 1")
    if not cores:
        cores = [0]
    if workers > len(cores):
        return [Placement("cpu", threads=1, cores=(cores[k % len(cores)],)) for k in range(workers)]
    per = len(cores) // workers
    plans = []
    for k in range(workers):
        chunk = cores[k * per : (k + 1) * per] if k < workers - 1 else cores[k * per :]
        plans.append(Placement("cpu", threads=len(chunk), cores=tuple(chunk)))
    return plans


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out, without importing torch here."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
        )
        count = int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        count = 0
    return [str(i) for i in range(count)]


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty if unknown)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512-BF16 or AMX).

    Without either, torch's CPU autocast to bf16 falls back to emulation that
    ran many times slower than float32 on an AVX2-only EPYC (a 128-token
    benchmark did not finish its first bf16 pass in 20 minutes). Read from
    /proc/cpuinfo, so asking costs no torch import.
    """
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def check_dtype(dtype: str, device: str) -> None:
    """Refuse bf16 on a CPU that would emulate it (PlanError says why and what to do)."""
    if dtype == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        raise PlanError(
            "--dtype bf16 needs a CPU with native bf16 (AVX-512-BF16 or AMX); this one has "
            "neither, and emulated bf16 is many times slower than float32. Use --dtype float32 "
            "(the default) or run on a GPU."
        )
