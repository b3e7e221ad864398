"""A worker for the tests of WorkerProcesses (standard library only, quick to start).

    python worker_program.py --port P --worker-id W --allocation-id A --mode MODE

Modes:
- `serve`: answers every HTTP request on 127.0.0.1:P with JSON: its argv,
  its LEDGER_* variables and its pid; with `--delay-seconds S` it sleeps S
  seconds before it listens (a slow start), with `--ignore-term` it ignores
  SIGTERM (only SIGKILL ends it, after the stop's grace period);
- `exit`: exits at once with `--exit-code`;
- `allocate`: allocates (and touches) `--megabytes` MB, one MB at a time
  (after `--delay-seconds` S), then sleeps; a memory limit below that ends it;
- `stubborn`: ignores SIGTERM and sleeps (only SIGKILL ends it);
- `escape`: starts a child that leaves the process group (setsid), writes
  the child's pid to `--pid-file`, and sleeps.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

MB = 1024 * 1024


def serve(port: int, delay_seconds: float = 0.0) -> None:
    if delay_seconds:
        print(f"starting slowly: listening in {delay_seconds} s", flush=True)
        time.sleep(delay_seconds)
    facts = {
        "argv": sys.argv,
        "env": {k: v for k, v in os.environ.items() if k.startswith("LEDGER_")},
        "pid": os.getpid(),
    }
    body = json.dumps(facts).encode()
    head = (
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    print(f"listening on {port}", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(head + body)


def allocate(megabytes: int, delay_seconds: float = 0.0) -> None:
    if delay_seconds:
        print(f"allocating in {delay_seconds} s", flush=True)
        time.sleep(delay_seconds)
    held = []
    for index in range(1, megabytes + 1):
        held.append(bytearray(b"\x01") * MB)  # written, so resident
        if index % 32 == 0:
            print(f"holding {index} MB", flush=True)
    print(f"allocated all {megabytes} MB", flush=True)
    time.sleep(600)


def escape(pid_file: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True,
    )
    with open(pid_file + ".tmp", "w") as out:
        out.write(str(child.pid))
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--allocation-id", required=True)
    parser.add_argument("--mode", default="serve")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--pid-file", default="")
    parser.add_argument("--delay-seconds", type=float, default=0.0)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "serve":
        serve(args.port, args.delay_seconds)
    elif args.mode == "exit":
        print(f"exiting with {args.exit_code}", flush=True)
        sys.exit(args.exit_code)
    elif args.mode == "allocate":
        allocate(args.megabytes, args.delay_seconds)
    elif args.mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(600)
    elif args.mode == "escape":
        escape(args.pid_file)
    else:
        parser.error(f"unknown mode {args.mode}")


if __name__ == "__main__":
    main()
