"""Training precision: which of fp32 / bf16 a trial runs in, and the autocast context for its steps.

`precision=auto` picks bf16 where the hardware computes it natively (a CUDA GPU that supports it, a
CPU with AVX512-BF16 or AMX) and fp32 elsewhere. A CPU counts only if this process's torch may use
those instructions: with its kernels capped below AVX512 (`ATEN_CPU_CAPABILITY=avx2`,
`ONEDNN_MAX_CPU_ISA=AVX2`, as docs/testing.md runs the tests to stand in for an AVX2 CPU) bf16 would
be emulated, and auto picks fp32 as it does on such a CPU. The capability checks are arguments, so
the resolution is testable on any machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def torch_cpu_isa_cap() -> str | None:
    """Why this process's torch may not use AVX512 on the CPU, or None where it may.

    ATen's own kernels follow ATEN_CPU_CAPABILITY (read when torch is imported) and oneDNN's, which
    run the convolutions and matmuls, follow ONEDNN_MAX_CPU_ISA; torch reports both as capped."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "AVX2"):
        return f"torch's CPU capability is {capability}"
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN: ATen's capability decides
        return None
    return None if onednn_bf16 else "oneDNN's CPU ISA is below AVX512"


def cpu_has_native_bf16(cpuinfo: str | None = None, isa_cap: str | None = "detect") -> bool:
    """True if /proc/cpuinfo (or the text given) lists AVX512-BF16 or AMX-BF16, and torch's CPU
    kernels are not capped below AVX512 (`isa_cap`: a reason they are, None, or "detect")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell cheaply, so fp32
            return False
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    if not any(flag in flags for flag in CPU_BF16_FLAGS):
        return False
    return (torch_cpu_isa_cap() if isa_cap == "detect" else isa_cap) is None


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: str, device_type: str, cpu_bf16: Callable[[], bool] = cpu_has_native_bf16,
                      cuda_bf16: Callable[[], bool] = cuda_has_bf16) -> str:
    """'fp32' or 'bf16' for a trial on `device_type` ('cpu' | 'cuda')."""
    if requested != "auto":
        return requested
    native = cuda_bf16() if device_type == "cuda" else cpu_bf16()
    return "bf16" if native else "fp32"


def autocast(device_type: str, precision: str):
    """The context for a model step: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

