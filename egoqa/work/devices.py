"""The devices `egoqa work` is asked to use, checked before any worker starts.

CUDA GPUs are counted from the NVIDIA device files (/dev/nvidia0, /dev/nvidia1, ...): no torch
import and no CUDA context for the usual case. Only where those show fewer GPUs than asked for
is torch asked as well (it also sees GPUs whose device files live elsewhere), so a refusal is
never a false one.
"""

from __future__ import annotations

import re
from pathlib import Path

from egoqa.errors import ConfigError

_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")
_GPU_FILE = re.compile(r"nvidia(\d+)")
CPU_HINT = "run on the CPU with --device cpu --workers N"


def device_file_count(dev: Path = Path("/dev")) -> int:
    """How many NVIDIA GPU device files (nvidia0, nvidia1, ...; not nvidiactl) `dev` holds."""
    try:
        return sum(1 for p in dev.iterdir() if _GPU_FILE.fullmatch(p.name))
    except OSError:
        return 0


def _torch_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 -- a broken CUDA install has no usable GPU either
        return 0


def cuda_count(need: int, dev: Path = Path("/dev")) -> int:
    """CUDA GPUs on this machine: the device files when they show at least `need`, else the
    larger of that and what torch sees."""
    found = device_file_count(dev)
    return found if found >= need else max(found, _torch_count())


def check_device(device: str) -> int | None:
    """Refuse a --device that is no device; the CUDA index it names (0 for plain cuda), if any."""
    m = _DEVICE.fullmatch(device)
    if m is None:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not device.startswith("cuda"):
        return None
    return int(m[1] or 0)


def _gpu_range(n: int) -> str:
    return "0" if n == 1 else f"0-{n - 1}"


def require_gpus(asked: str, need: int, dev: Path = Path("/dev")) -> None:
    """Refuse to start workers on GPUs this machine does not have (`need`: highest id + 1)."""
    found = cuda_count(need, dev)
    if found >= need:
        return
    if found == 0:
        raise ConfigError(f"{asked} asks for a CUDA GPU, but this machine has none: {CPU_HINT}")
    raise ConfigError(
        f"{asked} asks for {need} CUDA GPU(s) (ids up to {need - 1}), but only {found} "
        f"{'is' if found == 1 else 'are'} visible (ids {_gpu_range(found)}): ask for those "
        f"(--gpus {_gpu_range(found)}), or {CPU_HINT}"
    )
