"""What both profiling scripts read: how often each instruction of a
`per_update` or `floors` run was executed, from callgrind."""
import collections
import os
import subprocess
import tempfile


def executions(binary, workload, updates, key):
    """`key(object file, address)` -> executions, over one run of `updates`
    updates of `workload` (callgrind with `--dump-instr=yes`); instructions
    for which `key` answers `None` are left out."""
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
                counted = key(object_file, int(fields[0], 16))
                if counted is not None and len(fields) > 2:
                    counts[counted] += int(fields[2])
    os.unlink(path)
    return counts
