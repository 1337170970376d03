#!/usr/bin/python3
"""Extract the seed tutorial's Go programs into buildable GOPATH-mode packages.

Usage: extract_seed.py SEED_FILE OUT_DIR PORT

The seed document is the project's founding spec, so its programs are used
verbatim: the only edit is pointing the hard-coded broker address at the
broker under test.  Anything else changing would mean we no longer test what
the tutorial's readers actually run.
"""

import os
import re
import sys

# Order of the ```go fences in the seed; the names are what run.sh drives.
NAMES = [
    "hello_send",
    "hello_receive",
    "task_send",
    "worker",
    "logs_send",
    "logs_receive",
    "direct_send",
    "direct_receive",
    "topic_send",
    "topic_receive",
]

SEED_ADDRESS = "124.222.86.11:5672"

# A fence opens with ```go alone on its line and closes at the next ``` line.
FENCE = re.compile(r"^```go[ \t]*\r?\n(.*?)^```[ \t]*$", re.M | re.S)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: extract_seed.py SEED_FILE OUT_DIR PORT")
    seed, out_dir, port = sys.argv[1:]
    if not port.isdigit():
        sys.exit("extract_seed.py: port must be numeric, got %r" % port)

    with open(seed, encoding="utf-8") as f:
        text = f.read()

    blocks = FENCE.findall(text)
    if len(blocks) != len(NAMES):
        sys.exit(
            "extract_seed.py: expected %d go blocks in %s, found %d"
            % (len(NAMES), seed, len(blocks))
        )

    for name, code in zip(NAMES, blocks):
        # Every program dials the broker exactly once; a different count
        # means the seed changed shape and the mapping above is suspect.
        if code.count(SEED_ADDRESS) != 1:
            sys.exit(
                "extract_seed.py: block %s contains the address %d times, expected 1"
                % (name, code.count(SEED_ADDRESS))
            )
        code = code.replace(SEED_ADDRESS, "127.0.0.1:%s" % port)
        pkg = os.path.join(out_dir, name)
        os.makedirs(pkg, exist_ok=True)
        path = os.path.join(pkg, "main.go")
        # Rewrite only on change so `go build` caching stays effective.
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == code:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)


if __name__ == "__main__":
    main()
