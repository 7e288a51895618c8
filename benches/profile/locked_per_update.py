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
import tempfile


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


def executions(binary, workload, updates):
    """Address -> executions, for the binary's own code."""
    handle, path = tempfile.mkstemp()
    os.close(handle)
    subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
                    "--compress-strings=no", f"--callgrind-out-file={path}",
                    binary, workload, str(updates)], capture_output=True, check=True)
    counts, in_binary, call_cost_follows = collections.Counter(), False, False
    with open(path) as out:
        for line in out:
            if line.startswith("ob="):
                in_binary = os.path.basename(line[3:].strip()) == os.path.basename(binary)
            elif line.startswith("calls="):
                call_cost_follows = True  # the next line is the call's inclusive cost
            elif line.startswith("0x"):
                if call_cost_follows:
                    call_cost_follows = False
                    continue
                fields = line.split()
                if in_binary and len(fields) > 2:
                    counts[int(fields[0], 16)] += int(fields[2])
    os.unlink(path)
    return counts


def main():
    binary, workload = sys.argv[1], sys.argv[2]
    updates = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    locked = locked_instructions(binary)
    first, second = executions(binary, workload, updates), executions(binary, workload, 2 * updates)
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
