#!/usr/bin/env python3
"""Plots fan-out latency percentiles against the number of streams, as SVG.

Reads the JSON reports of `bench run` (docs/bench/fanout-*.json by default) and writes
docs/bench/fanout-latency.svg. When reports of the same scenario against `bench floor`
are there too (docs/bench/floor-*.json), their p99 is drawn dashed: what the machine
itself costs; against nchan (docs/bench/nchan-*.json), its p99 dotted. Standard library
only.

    python3 apps/bench/plot.py [REPORT.json ...] [--floor FLOOR.json ...] [--out FILE.svg]
"""

import glob
import json
import sys

SERIES = [("p50_ms", "p50", "#3b5bdb"), ("p90_ms", "p90", "#2f9e44"),
          ("p99_ms", "p99", "#f08c00"), ("max_ms", "max", "#e03131")]
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 420, 70, 110, 40, 60


def main(argv):
    out = "docs/bench/fanout-latency.svg"
    if "--out" in argv:
        i = argv.index("--out")
        out = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    floor_paths = sorted(glob.glob("docs/bench/floor-*.json"))
    if "--floor" in argv:
        i = argv.index("--floor")
        floor_paths = argv[i + 1:]
        argv = argv[:i]
    paths = argv or sorted(glob.glob("docs/bench/fanout-*.json"))

    def load(paths):
        return sorted((json.load(open(p)) for p in paths), key=lambda r: r["streams_connected"])

    reports = load(paths)
    floor = load(floor_paths)
    nchan = load(sorted(glob.glob("docs/bench/nchan-*.json")))
    if not reports:
        sys.exit("no reports to plot")
    xs = [r["streams_connected"] for r in reports]
    y_max = max(r["latency"]["max_ms"] for r in reports + floor + nchan) * 1.1
    x_max = max(xs) * 1.05

    def px(x):
        return LEFT + (W - LEFT - RIGHT) * x / x_max

    def py(y):
        return H - BOTTOM - (H - TOP - BOTTOM) * y / y_max

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">'
           'One broadcast fanned out to N streams on one instance: latency from publication</text>']
    for i in range(6):
        y = y_max * i / 5
        svg.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>')
    for x in xs:
        svg.append(f'<text x="{px(x):.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{x}</text>')
    svg.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="#333"/>')
    svg.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#333"/>')
    svg.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 15}" text-anchor="middle">streams</text>')
    svg.append(f'<text x="18" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(TOP + H - BOTTOM) / 2})">latency (ms)</text>')
    for n, (key, label, colour) in enumerate(SERIES):
        points = " ".join(f"{px(x):.1f},{py(r['latency'][key]):.1f}" for x, r in zip(xs, reports))
        svg.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, r in zip(xs, reports):
            svg.append(f'<circle cx="{px(x):.1f}" cy="{py(r["latency"][key]):.1f}" r="3" fill="{colour}"/>')
        ly = TOP + 20 + 20 * n
        svg.append(f'<line x1="{W - RIGHT + 15}" x2="{W - RIGHT + 35}" y1="{ly}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        svg.append(f'<text x="{W - RIGHT + 40}" y="{ly + 4}">{label}</text>')
    if floor:
        points = " ".join(f"{px(r['streams_connected']):.1f},{py(r['latency']['p99_ms']):.1f}"
                          for r in floor)
        svg.append(f'<polyline points="{points}" fill="none" stroke="#868e96" stroke-width="2" '
                   'stroke-dasharray="6 4"/>')
        ly = TOP + 20 + 20 * len(SERIES)
        svg.append(f'<line x1="{W - RIGHT + 15}" x2="{W - RIGHT + 35}" y1="{ly}" y2="{ly}" '
                   'stroke="#868e96" stroke-width="2" stroke-dasharray="6 4"/>')
        svg.append(f'<text x="{W - RIGHT + 40}" y="{ly + 4}">floor p99</text>')
    if nchan:
        points = " ".join(f"{px(r['streams_connected']):.1f},{py(r['latency']['p99_ms']):.1f}"
                          for r in nchan)
        svg.append(f'<polyline points="{points}" fill="none" stroke="#7048e8" stroke-width="2" '
                   'stroke-dasharray="2 3"/>')
        ly = TOP + 20 + 20 * (len(SERIES) + 1)
        svg.append(f'<line x1="{W - RIGHT + 15}" x2="{W - RIGHT + 35}" y1="{ly}" y2="{ly}" '
                   'stroke="#7048e8" stroke-width="2" stroke-dasharray="2 3"/>')
        svg.append(f'<text x="{W - RIGHT + 40}" y="{ly + 4}">nchan p99</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {out} from {len(reports)} reports")


if __name__ == "__main__":
    main(sys.argv[1:])
