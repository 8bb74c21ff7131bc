#!/usr/bin/env python3
"""Runs README.md's code blocks in order, in a fresh clone, as a new user following the page would.

    Tests/run_readme_blocks.py            # a clone of HEAD in a temporary folder
    Tests/run_readme_blocks.py --long     # also the blocks marked long (the test suite, fuzzing, benchmarks, DocC)
    Tests/run_readme_blocks.py --keep     # leave the clone for a look afterwards

What each block is taken to be:
  ```sh       run with bash -e from the clone's root, .build/release on PATH (the page writes `bottleneck ...`);
  ```python   run with python3 from the clone's root (the h5py example needs h5py: pip install h5py);
  ```yaml     a pipeline: written to a file at the clone's root and checked with `bottleneck run --check`;
  ```swift    the library example, which Tests/LibraryExampleTests compiles, runs and compares with the page;
  ```         (no language) a transcript or a listing: shown output, nothing to run.
A comment on the line above a block changes that:
  <!-- readme-blocks: skip: WHY -->   never run here (it needs a cluster or the internet); WHY is printed.
  <!-- readme-blocks: long: WHY -->   run only with --long.
Exit status 1 when a block that ran failed. Needs git, python3 and what the README's first block installs.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

MARKER = re.compile(r"<!--\s*readme-blocks:\s*(skip|long):\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def blocks(readme_path):
    """(line of the opening fence, language, text, marker, reason) for each fenced block."""
    lines = open(readme_path, encoding="utf-8").read().split("\n")
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        marker = MARKER.search(lines[index - 1]) if index > 0 else None
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            sys.exit(f"README.md:{index + 1}: a code block that never closes")
        found.append((index + 1, opening.group(1), "\n".join(lines[index + 1:end]) + "\n",
                      marker.group(1) if marker else None, marker.group(2) if marker else ""))
        index = end + 1
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", action="store_true", help="also run the blocks marked long")
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    arguments = parser.parse_args()

    repository = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=os.path.dirname(os.path.abspath(__file__)),
                                check=True, capture_output=True, text=True).stdout.strip()
    workspace = tempfile.mkdtemp(prefix="readme-blocks-")
    clone = os.path.join(workspace, "bottleneck")
    subprocess.run(["git", "clone", "-q", repository, clone], check=True)
    head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=clone, capture_output=True, text=True).stdout.strip()
    print(f"fresh clone of {head[:80]} in {clone}")
    environment = dict(os.environ, PATH=os.path.join(clone, ".build/release") + os.pathsep + os.environ["PATH"])

    outcomes = {"ran": 0, "failed": 0, "skipped": 0, "shown": 0}
    for number, (line, language, text, marker, reason) in enumerate(blocks(os.path.join(clone, "README.md")), 1):
        where = f"README.md:{line} ({language or 'output'})"
        first = text.strip().split("\n")[0][:90]
        if marker == "skip" or (marker == "long" and not arguments.long):
            print(f"[{number:2}] {where}: skipped, {reason or 'marked ' + marker}: {first}")
            outcomes["skipped"] += 1
            continue
        if language == "sh":
            command = ["bash", "-e", "-o", "pipefail", "-c", text]
        elif language == "python":
            command = ["python3", "-c", text]
        elif language == "yaml":
            pipeline = os.path.join(clone, f"readme-block-{line}.yaml")
            with open(pipeline, "w", encoding="utf-8") as file:
                file.write(text)
            command = ["bottleneck", "run", "--check", pipeline]
        elif language == "swift":
            print(f"[{number:2}] {where}: compiled and run by Tests/LibraryExampleTests: {first}")
            outcomes["shown"] += 1
            continue
        else:
            outcomes["shown"] += 1
            continue
        print(f"[{number:2}] {where}: {first}", flush=True)
        start = time.monotonic()
        result = subprocess.run(command, cwd=clone, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        seconds = time.monotonic() - start
        tail = "\n".join("      " + text_line for text_line in result.stdout.rstrip().split("\n")[-12:])
        if result.returncode == 0:
            print(f"     ok in {seconds:.1f} s\n{tail}")
            outcomes["ran"] += 1
        else:
            print(f"     FAILED (exit {result.returncode}) after {seconds:.1f} s\n{tail}")
            outcomes["failed"] += 1

    print(f"{outcomes['ran']} blocks ran, {outcomes['failed']} failed, {outcomes['skipped']} skipped, "
          f"{outcomes['shown']} shown output or checked elsewhere")
    if not arguments.keep:
        subprocess.run(["rm", "-rf", workspace])
    return 1 if outcomes["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
