"""Device, seeds, determinism and the environment record (DESIGN sections 5 and 6).

``resolve_device`` turns the config's ``device`` field into a :class:`torch.device`;
``set_determinism`` switches PyTorch's deterministic algorithms and cuDNN flags;
``seed_everything`` seeds python/numpy/torch; ``environment_info`` is what ``RUN/env.json`` holds.
"""

from __future__ import annotations

import os
import platform
import random
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from xkd.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cuda`` without a GPU is a :class:`ConfigError`.

    Under ``torchrun`` with CUDA the device is ``cuda:LOCAL_RANK`` (one GPU per process).
    """
    if isinstance(name, torch.device):
        return name
    allowed = ("auto", "cpu", "cuda")
    base = str(name).split(":")[0]
    if base not in allowed:
        raise ConfigError("device", f"unknown device '{name}'; allowed: {', '.join(allowed)}")
    if base == "cpu" or (base == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device", "'cuda' was requested but no CUDA GPU is available; "
                                    "use device: auto or device: cpu")
    if ":" in str(name):
        return torch.device(str(name))
    local = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())


def set_determinism(flag: bool) -> None:
    """Deterministic algorithms (warn-only) and fixed cuDNN kernels when ``flag``; fast defaults otherwise."""
    if flag:
        # Needed by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(flag, warn_only=True)
    torch.backends.cudnn.deterministic = flag
    torch.backends.cudnn.benchmark = not flag


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integer parts (e.g. seed, epoch, rank), order-sensitive."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0]) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return None
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return sha + ("-dirty" if dirty else "")


def environment_info(seed: int, argv: Sequence[str] | None = None,
                     device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device, seed, command line, host and git commit, for ``RUN/env.json``."""
    import xkd

    argv = list(sys.argv if argv is None else argv)
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "xkd": xkd.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "captum": _version("captum"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device) if device is not None else str(resolve_device("auto")),
        "cuda": {
            "available": cuda,
            "version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda else [],
        },
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "seed": seed,
        "command": shlex.join(argv),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
        "cpu_threads": torch.get_num_threads(),
    }
    return info
