"""The device being measured and the facts ``profile.yaml`` records about it.

``parse_device`` and ``match_gpu_name`` are pure; ``probe_device`` asks torch (imported by the caller
and passed in, so that importing this module never imports torch).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from pdsim.errors import ProfileError

# (pattern on the reported device name, name in pdsim/data/gpu_specs.csv). First match wins; names
# are as torch.cuda.get_device_name reports them, e.g. "NVIDIA H100 80GB HBM3" (the SXM part),
# "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "AMD Instinct MI300X". Parts the catalog does not hold
# (H100 NVL, H200 NVL, A100 PCIe, consumer cards) match nothing.
_GPU_RULES: tuple[tuple[str, str], ...] = (
    (r"\bGB200\b", "GB200"),
    (r"\bB300\b", "B300"),
    (r"\bB200\b", "B200"),
    (r"\bH200\b(?!.*\bNVL\b)", "H200-SXM"),
    (r"\bH100\b.*\bPCIe\b", "H100-PCIe"),
    (r"\bH100\b(?!.*\b(NVL|PCIe)\b)", "H100-SXM"),
    (r"\bA100\b.*\bSXM\w*[- ]80GB\b", "A100-80GB-SXM"),
    (r"\bA100\b.*\bSXM\w*[- ]40GB\b", "A100-40GB-SXM"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10G\b", "A10G"),
    (r"\bMI325X\b", "MI325X"),
    (r"\bMI300X\b", "MI300X"),
    (r"\bMI250X\b", "MI250X"),
    (r"\bMI210\b", "MI210"),
)


def match_gpu_name(device_name: str, catalog_names: set[str] | list[str]) -> str | None:
    """The ``gpu_specs.csv`` name of a device when its reported name clearly matches one, else None.

    >>> match_gpu_name("NVIDIA H200", {"H200-SXM"})
    'H200-SXM'
    """
    for pattern, gpu in _GPU_RULES:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return gpu if gpu in catalog_names else None
    return None


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A parsed ``--device``: ``kind`` cpu or cuda, and the CUDA index (None for cpu)."""

    kind: str
    index: int | None

    @property
    def torch_name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index or 0}"


def parse_device(text: str) -> DeviceSpec:
    """``cpu``, ``cuda`` or ``cuda:N`` (ROCm builds of torch use ``cuda`` too).

    Raises:
        ProfileError: anything else.
    """
    t = text.strip().lower()
    if t == "cpu":
        return DeviceSpec("cpu", None)
    m = re.fullmatch(r"cuda(?::(\d+))?", t)
    if m:
        return DeviceSpec("cuda", int(m.group(1) or 0))
    raise ProfileError(f"--device: unknown device {text!r}; expected cpu, cuda or cuda:N (ROCm builds of torch also use cuda)")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What ``profile.yaml`` says about the measured device (see ``ProfileMeta``)."""

    spec: DeviceSpec
    device_type: str  # cuda, rocm or cpu
    vendor: str
    device_name: str
    gpu: str | None
    memory_bytes: int | None
    device_count: int
    software: dict = field(default_factory=dict)
    arch: str | None = None  # e.g. sm_90, gfx942

    @property
    def is_gpu(self) -> bool:
        return self.spec.kind == "cuda"


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


_CPU_VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "HygonGenuine": "Hygon"}
_ARM_IMPLEMENTERS = {"0x41": "Arm", "0x61": "Apple", "0xc0": "Ampere", "0x48": "HiSilicon", "0x4e": "NVIDIA"}


def cpu_vendor_and_name() -> tuple[str, str]:
    """(vendor, model name) of the host CPU from ``/proc/cpuinfo``, else ``platform``."""
    info = _cpuinfo()
    vendor = _CPU_VENDORS.get(info.get("vendor_id", ""), info.get("vendor_id") or "")
    if not vendor and "CPU implementer" in info:
        vendor = _ARM_IMPLEMENTERS.get(info["CPU implementer"].lower(), info["CPU implementer"])
    name = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or platform.machine()
    return vendor or platform.machine() or "unknown", name or "unknown CPU"


def host_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def last_level_cache_bytes() -> int | None:
    """Total size of the host's last-level CPU cache over all its instances (one L3 per socket or
    CCX), from sysfs (Linux), e.g. 32 MiB; None if unknown."""
    return cpu_cache_bytes()


def cpu_cache_bytes(level: int | None = None, root: str = "/sys/devices/system/cpu") -> int | None:
    """Total size of the host's unified or data CPU caches of one level over all their instances (an L2
    per core, an L3 per socket or CCX), from sysfs (Linux) ``/sys/devices/system/cpu/cpu*/cache``.

    Args:
        level: the cache level (2 for the per-core L2); None for the last level.
        root: the sysfs directory of the CPUs (tests point it at a fake tree).

    Returns:
        Bytes, e.g. 4 MiB for two cores with 2 MiB of L2 each; None if sysfs does not say.
    """
    sizes: dict[tuple[int, str], int] = {}  # (level, shared_cpu_list) -> size of that instance
    try:
        cpus = [d for d in os.listdir(root) if re.fullmatch(r"cpu\d+", d)]
        for cpu in cpus:
            base = os.path.join(root, cpu, "cache")
            if not os.path.isdir(base):
                continue
            for entry in os.listdir(base):
                d = os.path.join(base, entry)
                if not entry.startswith("index"):
                    continue
                if open(os.path.join(d, "type")).read().strip() == "Instruction":
                    continue
                lvl = int(open(os.path.join(d, "level")).read())
                m = re.fullmatch(r"(\d+)([KMG]?)", open(os.path.join(d, "size")).read().strip().upper())
                if not m:
                    continue
                shared = open(os.path.join(d, "shared_cpu_list")).read().strip()
                sizes[(lvl, shared)] = int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]
    except (OSError, ValueError):
        return None
    if not sizes:
        return None
    want = max(lvl for lvl, _ in sizes) if level is None else level
    return sum(size for (lvl, _), size in sizes.items() if lvl == want) or None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def software_versions(torch, gpu: bool) -> dict:
    """torch, CUDA / ROCm, driver, NCCL/RCCL and Python versions (what is known)."""
    sw = {"torch": torch.__version__, "python": platform.python_version()}
    if getattr(torch.version, "cuda", None):
        sw["cuda"] = torch.version.cuda
    if getattr(torch.version, "hip", None):
        sw["rocm"] = torch.version.hip
    if gpu:
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if driver:
            sw["driver"] = driver.splitlines()[0].strip()
        elif getattr(torch.version, "hip", None):
            text = _run(["rocm-smi", "--showdriverversion"])
            m = re.search(r"[Dd]river version:\s*(\S+)", text or "")
            if m:
                sw["driver"] = m.group(1)
        try:
            v = torch.cuda.nccl.version()
            sw["nccl"] = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        except Exception:  # torch without NCCL/RCCL, or no driver
            pass
    return sw


def probe_device(torch, spec: DeviceSpec, catalog_names: set[str]) -> DeviceInfo:
    """Check that ``spec`` is usable and describe it.

    Raises:
        ProfileError: CUDA requested on a torch build or machine without a usable GPU, or an index
            beyond the visible devices.
    """
    if spec.kind == "cpu":
        vendor, name = cpu_vendor_and_name()
        return DeviceInfo(spec, "cpu", vendor, name, None, host_memory_bytes(), 1, software_versions(torch, False))
    if not torch.cuda.is_available():
        build = torch.__version__
        hint = " (a CPU-only build of torch)" if not (torch.version.cuda or getattr(torch.version, "hip", None)) else ""
        raise ProfileError(f"--device {spec.torch_name}: torch.cuda.is_available() is False on this machine; torch {build}{hint}")
    count = torch.cuda.device_count()
    index = spec.index or 0
    if index >= count:
        raise ProfileError(f"--device {spec.torch_name}: only {count} CUDA device(s) visible (cuda:0 .. cuda:{count - 1})")
    props = torch.cuda.get_device_properties(index)
    name = torch.cuda.get_device_name(index)
    rocm = bool(getattr(torch.version, "hip", None))
    arch = getattr(props, "gcnArchName", None) if rocm else f"sm_{props.major}{props.minor}"
    vendor = "AMD" if rocm else "NVIDIA"
    return DeviceInfo(
        spec=DeviceSpec("cuda", index),
        device_type="rocm" if rocm else "cuda",
        vendor=vendor,
        device_name=name,
        gpu=match_gpu_name(name, catalog_names),
        memory_bytes=int(props.total_memory),
        device_count=count,
        software=software_versions(torch, True),
        arch=arch,
    )
