#!/usr/bin/env python3
"""Code executed per update: the 64-byte lines of code one workload of
`per_update` (or `floors`) runs at least once every two updates, per
object file, against the 32 KB of a first-level instruction cache.

usage: hot_code.py <binary> <workload> [n]
e.g.:  hot_code.py target/release/examples/per_update memory-4 2000
"""
import collections
import sys

from callgrind import executions


def main():
    binary, workload = sys.argv[1], sys.argv[2]
    updates = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    line = lambda object_file, address: (object_file, address // 64)
    first = executions(binary, workload, updates, line)
    second = executions(binary, workload, 2 * updates, line)
    hot = [line for line, count in second.items() if count - first.get(line, 0) >= updates // 2]
    by_object = collections.Counter(object_file for object_file, _ in hot)
    print(f"{workload}: {len(hot)} lines of code ({len(hot) * 64} bytes) per update: {dict(by_object)}")


if __name__ == "__main__":
    main()
