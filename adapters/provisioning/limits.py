"""A worker's CPU and memory, capped by the operating system.

The supervisor picks, once, the best mechanism the machine offers for each
dimension (`Limiter.detect`), and gives every worker a cgroup of its own
under a group named for the data directory:

- cgroup v2 (unified hierarchy): `memory.max` caps memory (with
  `memory.swap.max` 0 and `memory.oom.group` 1: the kernel kills the whole
  worker when it passes its memory); `cpu.max` (quota over period) caps CPU.
  Usable only when the supervisor's own group lets its children have the
  `memory` and `cpu` controllers (a delegated group; `v2_parent` names one).
- cgroup v1: a group in the `memory` hierarchy (`memory.limit_in_bytes`, and
  `memory.memsw.limit_in_bytes` where swap is accounted) and one in the `cpu`
  hierarchy (`cpu.cfs_quota_us` over `cpu.cfs_period_us`).
- otherwise `RLIMIT_AS` caps each process's address space (virtual memory,
  not resident memory: a program that reserves much more than it touches
  can fail early), and the CPU is not limited (`RLIMIT_CPU` caps CPU
  seconds in all, not a rate, so it is no fit).

A reservation of 0 millicores or 0 MiB is left unlimited in that dimension
(a worker sized at nothing is not capped at nothing). The CPU quota is at
least 1 ms per 100 ms period (10 millicores), the kernel's minimum.

What is in force on one worker is a `WorkerLimits`; the functions below
(`procs_files`, `memory_kills`, `release_groups`) need only that, so a
worker adopted from an earlier run is handled from its state file.
Linux only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import quote

from allocation_ledger.adapters.provisioning.cgroups import (
    Controller,
    probe_v1,
    probe_v2,
    write,
    write_optional,
)

MemoryMechanism = Literal["cgroup-v2", "cgroup-v1", "rlimit-as", "none"]
CpuMechanism = Literal["cgroup-v2", "cgroup-v1", "none"]

MIB = 1024 * 1024
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
POLL_SECONDS = 0.02


def group_name(data_dir: Path) -> str:
    """The group of one data directory's workers: `allocation-ledger-<hash>`."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()
    return f"allocation-ledger-{digest[:12]}"


def worker_group_name(worker_id: str) -> str:
    """A worker's own group: `worker-<worker_id>`, quoted to be a safe name."""
    return f"worker-{quote(worker_id, safe='._-')}"


def cpu_quota_us(millicores: int) -> int:
    """The CFS quota per 100 ms period for `millicores` (at least the minimum)."""
    return max(MIN_CPU_QUOTA_US, millicores * CPU_PERIOD_US // 1000)


@dataclass(frozen=True)
class Enforcement:
    """The mechanisms in force for new workers; `note` says why not a better one."""

    memory: MemoryMechanism
    cpu: CpuMechanism
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        """`{"memory": ..., "cpu": ...}` (and `note` when there is one)."""
        shown = {"memory": self.memory, "cpu": self.cpu}
        return shown | ({"note": self.note} if self.note else {})


@dataclass(frozen=True)
class WorkerLimits:
    """The limits in force on one worker.

    `memory_group` / `cpu_group` are the worker's cgroup directories (the same
    one under cgroup v2; None when that dimension has no cgroup);
    `rlimit_as_bytes` is its RLIMIT_AS when that caps its memory.
    """

    cpu_millicores: int
    memory_mib: int
    memory: MemoryMechanism
    cpu: CpuMechanism
    memory_group: str | None = None
    cpu_group: str | None = None
    rlimit_as_bytes: int | None = None

    def groups(self) -> list[Path]:
        """The worker's cgroup directories, each once."""
        found = [g for g in (self.memory_group, self.cpu_group) if g is not None]
        return [Path(g) for g in dict.fromkeys(found)]

    def as_detail(self) -> dict[str, Any]:
        """JSON-friendly, for events and state files."""
        return {
            "cpu_millicores": self.cpu_millicores,
            "memory_mib": self.memory_mib,
            "memory": self.memory,
            "cpu": self.cpu,
            "memory_group": self.memory_group,
            "cpu_group": self.cpu_group,
            "rlimit_as_bytes": self.rlimit_as_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerLimits:
        """Parse what as_detail wrote; raises ValueError, KeyError or TypeError."""
        memory, cpu = str(data["memory"]), str(data["cpu"])
        if memory not in ("cgroup-v2", "cgroup-v1", "rlimit-as", "none"):
            raise ValueError(f"unknown memory mechanism {memory!r}")
        if cpu not in ("cgroup-v2", "cgroup-v1", "none"):
            raise ValueError(f"unknown cpu mechanism {cpu!r}")

        def optional(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        rlimit = data.get("rlimit_as_bytes")
        return cls(
            cpu_millicores=int(data["cpu_millicores"]),
            memory_mib=int(data["memory_mib"]),
            memory=cast(MemoryMechanism, memory),
            cpu=cast(CpuMechanism, cpu),
            memory_group=optional("memory_group"),
            cpu_group=optional("cpu_group"),
            rlimit_as_bytes=None if rlimit is None else int(rlimit),
        )


# -- what the functions need of one worker's limits ----------------------------


def procs_files(limits: WorkerLimits) -> list[str]:
    """The `cgroup.procs` files a worker writes its pid to before it runs."""
    return [str(group / "cgroup.procs") for group in limits.groups()]


def memory_kills(limits: WorkerLimits) -> int | None:
    """How often the kernel killed in the worker's memory group for passing its
    limit (`oom_kill` in memory.oom_control, v1, or memory.events, v2).

    None when there is no memory group, it is gone, or the kernel does not
    count (v1 before Linux 4.13).
    """
    if limits.memory_group is None:
        return None
    name = "memory.events" if limits.memory == "cgroup-v2" else "memory.oom_control"
    try:
        text = (Path(limits.memory_group) / name).read_text()
    except OSError:
        return None
    counts = dict(_key_values(text))
    return counts.get("oom_kill")


def group_pids(limits: WorkerLimits) -> set[int]:
    """Every process in the worker's cgroups now."""
    pids: set[int] = set()
    for group in limits.groups():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
    return pids


def release_groups(limits: WorkerLimits, timeout_seconds: float = 5.0) -> bool:
    """SIGKILL whatever is left in the worker's cgroups and remove them.

    This reaches the worker's descendants that left its process group. True
    when every group is gone (or there were none).
    """
    groups = limits.groups()
    deadline = time.monotonic() + timeout_seconds
    while True:
        for pid in group_pids(limits):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for group in groups:
            with contextlib.suppress(FileNotFoundError, OSError):
                group.rmdir()
        if not any(group.exists() for group in groups):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def _key_values(text: str) -> Iterator[tuple[str, int]]:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            yield parts[0], int(parts[1])


# -- choosing the mechanism and preparing groups -------------------------------


@dataclass
class Limiter:
    """Prepares the limits of each new worker; see the module docstring.

    `Limiter.detect(name)` finds the best mechanisms; `Limiter.rlimit_only()`
    forces the fallback. `prepare` makes a worker's groups and writes its
    limits; `close` removes the parent groups once they are empty.
    """

    memory_controller: Controller | None = None
    cpu_controller: Controller | None = None
    note: str = ""
    _bases: list[Path] = field(default_factory=list)

    @classmethod
    def rlimit_only(cls, note: str = "cgroups not used (chosen)") -> Limiter:
        """RLIMIT_AS for memory, no CPU limit."""
        return cls(note=note)

    @classmethod
    def detect(cls, name: str, *, v2_parent: Path | None = None) -> Limiter:
        """The best mechanisms for each dimension: cgroup v2, then v1, then none
        (memory: RLIMIT_AS). Worker groups go under a group `name`, made under
        the supervisor's own cgroup (or `v2_parent`); probed by making a group
        and writing a limit into it.
        """
        notes: list[str] = []
        memory = cpu = None
        v2 = probe_v2(name, v2_parent, notes)
        if v2 is not None:
            base, controllers = v2
            subtree = " ".join(f"+{c}" for c in sorted(controllers))
            v2_controller = Controller(2, base, subtree)
            memory = v2_controller if "memory" in controllers else None
            cpu = v2_controller if "cpu" in controllers else None
        if memory is None:
            memory = probe_v1("memory", name, "memory.limit_in_bytes", notes)
        if cpu is None:
            cpu = probe_v1("cpu", name, "cpu.cfs_quota_us", notes)
        fell_back = memory is None or cpu is None
        limiter = cls(memory, cpu, "; ".join(notes) if fell_back else "")
        limiter._bases = list(
            dict.fromkeys(c.base for c in (memory, cpu) if c is not None)
        )
        return limiter

    @property
    def bases(self) -> list[Path]:
        """The parent groups under which worker groups are made."""
        return list(self._bases)

    @property
    def enforcement(self) -> Enforcement:
        """What new workers get."""
        memory: MemoryMechanism = "rlimit-as"
        cpu: CpuMechanism = "none"
        if self.memory_controller is not None:
            memory = "cgroup-v2" if self.memory_controller.version == 2 else "cgroup-v1"
        if self.cpu_controller is not None:
            cpu = "cgroup-v2" if self.cpu_controller.version == 2 else "cgroup-v1"
        return Enforcement(memory, cpu, self.note)

    def prepare(
        self, worker_id: str, cpu_millicores: int, memory_mib: int
    ) -> WorkerLimits:
        """Make the worker's groups and write its limits; what is in force.

        The worker joins its groups itself before it runs (procs_files).
        Raises OSError (after removing what it made) when a group cannot be
        made or a limit written.
        """
        enforcement = self.enforcement
        name = worker_group_name(worker_id)
        memory_group = cpu_group = None
        rlimit = None
        memory_kind: MemoryMechanism = enforcement.memory
        cpu_kind: CpuMechanism = enforcement.cpu
        made: list[Path] = []
        try:
            if memory_mib <= 0:
                memory_kind = "none"
            elif self.memory_controller is not None:
                group = self._make(self.memory_controller, name, made)
                _write_memory(self.memory_controller.version, group, memory_mib)
                memory_group = str(group)
            else:
                rlimit = memory_mib * MIB
            if cpu_millicores <= 0:
                cpu_kind = "none"
            elif self.cpu_controller is not None:
                group = self._make(self.cpu_controller, name, made)
                _write_cpu(self.cpu_controller.version, group, cpu_millicores)
                cpu_group = str(group)
        except OSError:
            for group in reversed(made):
                with contextlib.suppress(OSError):
                    group.rmdir()
            raise
        return WorkerLimits(
            cpu_millicores,
            memory_mib,
            memory_kind,
            cpu_kind,
            memory_group,
            cpu_group,
            rlimit,
        )

    def close(self) -> None:
        """Remove the parent groups when no worker group is left in them."""
        for base in self._bases:
            with contextlib.suppress(OSError):
                base.rmdir()

    @staticmethod
    def _make(controller: Controller, name: str, made: list[Path]) -> Path:
        """The worker's group of `controller`, made (with its parent) if need be."""
        group = controller.base / name
        if group not in made:
            if not controller.base.is_dir():  # removed by a close() meanwhile
                controller.base.mkdir(exist_ok=True)
                if controller.subtree:
                    control = controller.base / "cgroup.subtree_control"
                    write(control, controller.subtree)
            group.mkdir(exist_ok=True)
            made.append(group)
        return group


def _write_memory(version: int, group: Path, memory_mib: int) -> None:
    limit = str(memory_mib * MIB)
    if version == 2:
        write(group / "memory.max", limit)
        write_optional(group / "memory.swap.max", "0")
        write_optional(group / "memory.oom.group", "1")
    else:
        write(group / "memory.limit_in_bytes", limit)
        write_optional(group / "memory.memsw.limit_in_bytes", limit)


def _write_cpu(version: int, group: Path, millicores: int) -> None:
    quota = cpu_quota_us(millicores)
    if version == 2:
        write(group / "cpu.max", f"{quota} {CPU_PERIOD_US}")
    else:
        write(group / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        write(group / "cpu.cfs_quota_us", str(quota))
