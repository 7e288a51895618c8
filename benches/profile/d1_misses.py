#!/usr/bin/env python3
"""Level-1 data cache misses per update: what one workload of `per_update`
misses in a simulated 32 KB, 8-way data cache (cachegrind's default), by
function. A miss the core cannot hide costs a dozen cycles or more, none of
them in an instruction count.

The difference of two runs (n and 2n updates) divided by n leaves out the
process's start. Compare with `teloxide`: on 1,000 users, ours missed 4.8
times per update and teloxide's `InMemStorage` 1.2; with every update on
one user (nothing left to miss), ours still ran 1.41 times teloxide's time
against 1.50, so misses were not most of that gap (README, "Benchmarks").

usage: d1_misses.py <per_update binary> <workload> [n]
e.g.:  d1_misses.py target/release/examples/per_update memory 20000
"""
import collections
import os
import subprocess
import sys
import tempfile


def misses(binary, workload, updates):
    """Function -> level-1 data misses (reads and writes), over one run."""
    handle, path = tempfile.mkstemp()
    os.close(handle)
    subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes",
                    f"--cachegrind-out-file={path}", binary, workload, str(updates)],
                   capture_output=True, check=True)
    by_function, events, function = collections.Counter(), [], None
    with open(path) as out:
        for line in out:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fn="):
                function = line[3:].strip()
            elif line[:1].isdigit() and events:
                counts = dict(zip(events, map(int, line.split()[1:])))
                by_function[function] += counts.get("D1mr", 0) + counts.get("D1mw", 0)
    os.unlink(path)
    return by_function


def main():
    binary, workload = sys.argv[1], sys.argv[2]
    updates = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    first = misses(binary, workload, updates)
    second = misses(binary, workload, 2 * updates)
    per_update = {function: (second[function] - first.get(function, 0)) / updates
                  for function in second}
    print(f"{workload}: {sum(per_update.values()):.2f} level-1 data misses per update")
    for function, count in sorted(per_update.items(), key=lambda item: -item[1])[:15]:
        if count >= 0.01:
            print(f"  {count:6.2f}  {function[:140]}")


if __name__ == "__main__":
    main()
