#!/usr/bin/env python
"""`accelerate launch` with a project accelerate config, on CPU processes: the users' DeepSpeed settings, no GPU.

    python scripts/cpu_launch.py --config_file accelerate_configs/zero3.yaml --num_processes 2 \\
        scripts/train.py --config recipes/tiny/grpo.yaml

It copies the config with only `use_cpu: true` and `mixed_precision: "no"` changed (DeepSpeed's CPU accelerator
talks gloo; bf16 is refused without a GPU) and runs `accelerate launch --config_file <copy> ...` with the rest
of the command line unchanged. Everything else (ZeRO stage, offload, zero3_init_flag, 16-bit saving) comes from
the file users launch on GPUs, so the tests run what users run. For tests and debugging; not for GPU machines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_config(src: str | Path, dst: str | Path) -> Path:
    """Write a copy of the accelerate config `src` that runs on CPU processes; return its path."""
    import yaml

    config = yaml.safe_load(Path(src).read_text()) or {}
    config.update(use_cpu=True, mixed_precision="no")
    Path(dst).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(dst)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True, help="an accelerate config, e.g. accelerate_configs/zero3.yaml")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--main_process_port", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds before the launch is killed")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the script and its arguments")
    args = parser.parse_args(argv)
    if not Path(args.config_file).is_file():
        parser.error(f"--config_file {args.config_file}: no such file")
    if args.num_processes < 1 or not args.command:
        parser.error("give --num_processes >= 1 and the script to launch")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # two processes on a few cores: one thread each
    with tempfile.TemporaryDirectory() as tmp:
        config = cpu_config(args.config_file, Path(tmp) / Path(args.config_file).name)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(args.num_processes), "--num_machines", "1"]
        if args.main_process_port:
            cmd += ["--main_process_port", str(args.main_process_port)]
        proc = subprocess.Popen(cmd + args.command, env=env)
        try:
            return proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:  # the ranks run in sessions of their own: kill the whole tree
            for pid in [proc.pid, *_descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            print(f"cpu_launch: killed after {args.timeout} s (a rank waiting on a collective hangs the job)",
                  file=sys.stderr)
            return 124


if __name__ == "__main__":
    sys.exit(main())
