#!/usr/bin/env python3
"""Turn one client suite's own report into lines `PASS<TAB>test id` / `FAIL<TAB>test id`.

Used by interop/client-suites.sh, which applies the exclusion list and counts. Each runner
names its tests its own way; the ids printed here are the ones the exclusion list uses:

  gojson FILE   `go test -json` output: the test function's name. A package that failed
                with no failing test (goleak's check in TestMain) becomes `FAIL TestMain`.
  pytest FILE   pytest output with `-rA`: the node id (`t/integration/x.py::test_y[param]`).
  junit FILE    node's junit reporter: the suite names and the test name joined by " > ".
  cargo FILE    libtest output: the test's path (`connection`).

Standard library only: it runs under Debian's python3 before any venv exists.
"""

import json
import re
import sys
import xml.etree.ElementTree as ET


def gojson(path):
    failed_tests = 0
    package_failed = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # build errors and other plain text
            action, test = event.get("Action"), event.get("Test")
            if test and "/" not in test and action in ("pass", "fail"):
                print(("PASS" if action == "pass" else "FAIL") + "\t" + test)
                failed_tests += action == "fail"
            elif not test and action == "fail":
                package_failed = True
    if package_failed and not failed_tests:
        print("FAIL\tTestMain")


def pytest(path):
    summary = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)")
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = summary.match(line)
            if m:
                print(("PASS" if m.group(1) == "PASSED" else "FAIL") + "\t" + m.group(2))


def junit(path):
    def walk(node, names):
        for child in node:
            if child.tag == "testsuite":
                walk(child, names + [child.get("name", "")])
            elif child.tag == "testcase":
                failed = child.find("failure") is not None or child.find("error") is not None
                skipped = child.find("skipped") is not None
                if not skipped:
                    test_id = " > ".join(names + [child.get("name", "")])
                    print(("FAIL" if failed else "PASS") + "\t" + test_id)

    walk(ET.parse(path).getroot(), [])


def cargo(path):
    result = re.compile(r"^test (\S+) \.\.\. (ok|FAILED)$")
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = result.match(line.rstrip("\n"))
            if m:
                print(("PASS" if m.group(2) == "ok" else "FAIL") + "\t" + m.group(1))


FORMATS = {"gojson": gojson, "pytest": pytest, "junit": junit, "cargo": cargo}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in FORMATS:
        sys.exit("usage: suite_results.py {%s} FILE" % "|".join(FORMATS))
    FORMATS[sys.argv[1]](sys.argv[2])
