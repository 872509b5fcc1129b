#!/usr/bin/env python3
"""Summarises `just bench-compare` runs: per server and stream count, the min / median /
max over the runs of fan-out p99, CPU per delivery and memory per stream. Standard
library only.

    python3 apps/bench/compare.py target/bench/cmp-*.json
"""

import json
import re
import statistics
import sys
from collections import defaultdict


def main(paths):
    runs = defaultdict(list)
    for path in paths:
        report = json.load(open(path))
        match = re.match(r"cmp-(\w+)-(\d+)-(pin\w+)-\d+$", report["scenario"]["name"])
        if match:
            runs[(int(match[2]), match[3], match[1])].append(report)
    if not runs:
        sys.exit("no bench-compare reports")

    def spread(values):
        return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"

    print("| streams | pinned | server | runs | p99 ms (min / median / max) "
          "| CPU µs per delivery | KiB per stream | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for (streams, pin, server), reports in sorted(runs.items()):
        p99 = [r["latency"]["p99_ms"] for r in reports]
        cpu = [r["server"]["cpu_us_per_delivery"] for r in reports]
        kib = [r["server"]["kib_per_stream"] for r in reports]
        lost = sum(r["lost"] + r["duplicates"] for r in reports)
        print(f"| {streams:,} | {pin == 'pinyes' and 'yes' or 'no'} | {server} | {len(reports)} "
              f"| {spread(p99)} | {spread(cpu)} | {spread(kib)} | {lost} |")


if __name__ == "__main__":
    main(sys.argv[1:])
