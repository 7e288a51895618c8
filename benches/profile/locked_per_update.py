#!/usr/bin/env python3
"""Atomic operations per update: the lock-prefixed instructions (and xchg
with memory, implicitly locked) one workload of `per_update` executes per
update, by function.

callgrind counts every instruction's executions (`--dump-instr=yes`);
objdump says which instructions are locked. The difference of two runs
(n and 2n updates) divided by n leaves out the process's start.

usage: locked_per_update.py <per_update binary> <workload> [n]
e.g.:  locked_per_update.py target/release/examples/per_update memory 5000
"""
import collections
import os
import re
import subprocess
import sys

from callgrind import executions


def locked_instructions(binary):
    """Address -> (function, instruction) of every locked instruction."""
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", binary],
                             capture_output=True, text=True, check=True).stdout
    locked, function = {}, None
    for line in listing.splitlines():
        header = re.match(r"^([0-9a-f]+) <(.*)>:", line)
        if header:
            function = header.group(2)
            continue
        instruction = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if not instruction:
            continue
        text = instruction.group(2)
        if text.startswith("lock ") or (text.startswith("xchg") and "(" in text):
            locked[int(instruction.group(1), 16)] = (function, text)
    return locked


def main():
    binary, workload = sys.argv[1], sys.argv[2]
    updates = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    locked = locked_instructions(binary)
    own = os.path.basename(binary)
    address = lambda object_file, at: at if object_file == own else None
    first = executions(binary, workload, updates, address)
    second = executions(binary, workload, 2 * updates, address)
    by_function = collections.Counter()
    for address, (function, _) in locked.items():
        by_function[function] += second.get(address, 0) - first.get(address, 0)
    total = sum(by_function.values())
    print(f"{workload}: {total / updates:.1f} locked instructions per update")
    for function, count in by_function.most_common(20):
        if count:
            print(f"  {count / updates:6.2f}  {function[:140]}")


if __name__ == "__main__":
    main()
