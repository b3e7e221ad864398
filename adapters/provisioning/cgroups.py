"""Finding this process's cgroups and the place to make worker groups in.

`probe_v2` and `probe_v1` look at /proc/self/cgroup and /proc/self/mountinfo,
make the parent group of one data directory's workers under this process's
own group, and prove it usable by making a child group and writing a limit
into it (then removing the child). Each says in `notes` why it could not.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space as \040


@dataclass(frozen=True)
class Controller:
    """Where one dimension's worker groups are made, and how."""

    version: Literal[1, 2]
    base: Path
    subtree: str = ""
    """v2: what the base group's cgroup.subtree_control enables, e.g. `+memory`."""


def write(path: Path, value: str) -> None:
    """Write value into a cgroup file (one write, as the kernel wants)."""
    with open(path, "w") as file:
        file.write(value)


def write_optional(path: Path, value: str) -> None:
    """Write when the kernel offers the file (swap accounting may be off)."""
    if path.exists():
        with contextlib.suppress(OSError):
            write(path, value)


@dataclass(frozen=True)
class Mount:
    """A cgroup mount: the group at its `root`, mounted at `point`; `fstype` is
    `cgroup` (v1, `options` name its controllers) or `cgroup2`."""

    root: str
    point: Path
    fstype: str
    options: frozenset[str]


def mounts() -> list[Mount]:
    """The cgroup mounts of this process (/proc/self/mountinfo)."""
    mounts = []
    try:
        lines = PROC_MOUNTINFO.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        point = Path(_OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[4]))
        options = frozenset(tail[2].split(","))
        mounts.append(Mount(fields[3], point, tail[0], options))
    return mounts


def own_groups() -> dict[str, str]:
    """{controller: path} of this process; the v2 path under the key ''."""
    groups: dict[str, str] = {}
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path
    return groups


def group_dir(mount: Mount, path: str) -> Path:
    """The directory of cgroup `path` in `mount` (whose root may be a subgroup)."""
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return mount.point / path.lstrip("/")


def probe_v2(
    name: str, v2_parent: Path | None, notes: list[str]
) -> tuple[Path, set[str]] | None:
    """The base group under which v2 worker groups get memory (and cpu), if any."""
    if v2_parent is None:
        own = own_groups().get("")
        mount = next((m for m in mounts() if m.fstype == "cgroup2"), None)
        if own is None or mount is None:
            return None
        parent = group_dir(mount, own)
    else:
        parent = Path(v2_parent)
    try:
        available = set((parent / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    wanted = available & {"memory", "cpu"}
    if "memory" not in wanted:
        notes.append(f"cgroup v2 at {parent} offers no memory controller")
        return None
    try:
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        for controller in sorted(wanted - enabled):
            write(parent / "cgroup.subtree_control", f"+{controller}")
        base = parent / name
        base.mkdir(exist_ok=True)
        subtree = " ".join(f"+{c}" for c in sorted(wanted))
        write(base / "cgroup.subtree_control", subtree)
        probe = base / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        try:
            write(probe / "memory.max", "max")
        finally:
            probe.rmdir()
    except OSError as exc:
        notes.append(f"cgroup v2 at {parent}: {exc.strerror or exc}")
        with contextlib.suppress(OSError):
            (parent / name).rmdir()
        return None
    return base, wanted


def probe_v1(
    controller: str, name: str, limit_file: str, notes: list[str]
) -> Controller | None:
    """The base group for v1 worker groups of `controller`, if one can be made."""
    own = own_groups().get(controller)
    mount = next(
        (m for m in mounts() if m.fstype == "cgroup" and controller in m.options),
        None,
    )
    if own is None or mount is None:
        notes.append(f"no cgroup v1 {controller} hierarchy")
        return None
    parent = group_dir(mount, own)
    base = parent / name
    try:
        base.mkdir(exist_ok=True)
        probe = base / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        try:
            current = (probe / limit_file).read_text().strip()
            write(probe / limit_file, current)
        finally:
            probe.rmdir()
    except OSError as exc:
        notes.append(f"cgroup v1 {controller} at {parent}: {exc.strerror or exc}")
        with contextlib.suppress(OSError):
            base.rmdir()
        return None
    return Controller(1, base)
