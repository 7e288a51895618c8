#!/usr/bin/env python3
"""Code executed per update: the 64-byte lines of code one workload of
`per_update` (or `floors`) runs at least once every two updates, per
object file, against the 32 KB of a first-level instruction cache.

usage: hot_code.py <binary> <workload> [n]
e.g.:  hot_code.py target/release/examples/per_update memory-4 2000
"""
import collections
import os
import subprocess
import sys
import tempfile


def executions(binary, workload, updates):
    """(object file, 64-byte line) -> executions."""
    handle, path = tempfile.mkstemp()
    os.close(handle)
    subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
                    "--compress-strings=no", f"--callgrind-out-file={path}",
                    binary, workload, str(updates)], capture_output=True, check=True)
    counts, object_file, call_cost_follows = collections.Counter(), None, False
    with open(path) as out:
        for line in out:
            if line.startswith("ob="):
                object_file = os.path.basename(line[3:].strip())
            elif line.startswith("calls="):
                call_cost_follows = True  # the next line is the call's inclusive cost
            elif line.startswith("0x"):
                if call_cost_follows:
                    call_cost_follows = False
                    continue
                fields = line.split()
                if len(fields) > 2:
                    counts[(object_file, int(fields[0], 16) // 64)] += int(fields[2])
    os.unlink(path)
    return counts


def main():
    binary, workload = sys.argv[1], sys.argv[2]
    updates = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    first, second = executions(binary, workload, updates), executions(binary, workload, 2 * updates)
    hot = [line for line, count in second.items() if count - first.get(line, 0) >= updates // 2]
    by_object = collections.Counter(object_file for object_file, _ in hot)
    print(f"{workload}: {len(hot)} lines of code ({len(hot) * 64} bytes) per update: {dict(by_object)}")


if __name__ == "__main__":
    main()
