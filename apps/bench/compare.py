#!/usr/bin/env python3
"""Summarises `just bench-compare` runs: per server (the backend once per scenario:
`backend` broadcasts, `backend_user1` one user's streams, `backend_topic1` one topic's) and
stream count, the min / median / max over the runs of fan-out p99, CPU per delivery and
memory per stream, each against the floor's. Standard library only.

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

    print("| streams | pinned | server | runs | p99 ms (min / median / max) | p99 ÷ floor "
          "| CPU µs per delivery | CPU ÷ floor | KiB per stream | streams connected per s "
          "| lost + duplicated |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    medians = {key: (statistics.median(r["latency"]["p99_ms"] for r in reports),
                     statistics.median(r["server"]["cpu_us_per_delivery"] for r in reports))
               for key, reports in runs.items()}
    for (streams, pin, server), reports in sorted(runs.items()):
        p99 = [r["latency"]["p99_ms"] for r in reports]
        cpu = [r["server"]["cpu_us_per_delivery"] for r in reports]
        kib = [r["server"]["kib_per_stream"] for r in reports]
        rate = [r["connects_per_sec"] for r in reports]
        lost = sum(r["lost"] + r["duplicates"] for r in reports)
        floor = medians.get((streams, pin, "floor"))
        ratio = (f"{medians[(streams, pin, server)][0] / floor[0]:.2f}",
                 f"{medians[(streams, pin, server)][1] / floor[1]:.2f}") if floor else ("", "")
        print(f"| {streams:,} | {'yes' if pin == 'pinyes' else 'no'} | {server} | {len(reports)} "
              f"| {spread(p99)} | {ratio[0]} | {spread(cpu)} | {ratio[1]} | {spread(kib)} "
              f"| {min(rate):,.0f} / {statistics.median(rate):,.0f} / {max(rate):,.0f} | {lost} |")


if __name__ == "__main__":
    main(sys.argv[1:])
