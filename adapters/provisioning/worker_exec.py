"""The first moments of a worker process: join its limits, then become the worker.

Run by the supervisor as `python -I -S worker_exec.py SETUP -- ARGV...`
(standard library only, no site packages, so it starts in milliseconds).
SETUP is JSON: `procs` (cgroup.procs files to write this pid to),
`rlimit_as` (bytes, or null) and `report_fd` (a pipe to the supervisor).
The process joins its cgroups and sets its RLIMIT_AS *before* it execs the
worker's argv, so nothing the worker does escapes its limits (joining after
the start would leave a window in which it could allocate or fork outside).

The pipe is closed on exec: the supervisor reading end-of-file with nothing
written knows the worker runs; otherwise it reads `{"errno", "message",
"step"}` and the process exits 127. The exec looks argv[0] up on the PATH of
the environment the worker was given, as subprocess does.
"""

from __future__ import annotations

import json
import os
import resource
import sys

EXEC_FAILED = 127


def main(args: list[str]) -> None:
    """Join the limits in args[0] and exec the argv after `--`."""
    setup = json.loads(args[0])
    argv = args[2:]
    report_fd = int(setup["report_fd"])
    step = "join its cgroup"
    try:
        for path in setup["procs"]:
            with open(path, "w") as procs:
                procs.write(str(os.getpid()))
        step = "set RLIMIT_AS"
        limit = setup.get("rlimit_as")
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
        step = "execute"
        os.set_inheritable(report_fd, False)
        os.execvp(argv[0], argv)
    except OSError as exc:
        report = {"errno": exc.errno, "message": exc.strerror or str(exc), "step": step}
        sys.stderr.write(f"cannot {step} {argv[0]!r}: {exc}\n")
        sys.stderr.flush()
        os.write(report_fd, json.dumps(report).encode())
        os._exit(EXEC_FAILED)


if __name__ == "__main__":
    main(sys.argv[1:])
