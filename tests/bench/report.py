#!/usr/bin/env python3
"""Render the results.json of bench.py as Markdown tables with each target's PASS or MISS.

Usage: report.py RESULTS_JSON [COMMAND]   (bench.py calls render_markdown itself)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CASE_TITLES = {
    "a": "(a) real 5-platform index (multiarch-oci)",
    "b": "(b) 5 platforms x 50 small layers (many-layers)",
    "c": "(c) 1 platform, 1 GiB layer + 16/32/64 MiB layers (large-1g)",
}
PEERS = ["crane", "regctl", "skopeo"]
SPEED_VS_FASTEST_PEER = 0.8
LARGE_VS_CURL = 1.15
LARGE_MAX_RSS_MIB = 64
UNCHANGED_MAX_REQUESTS = 2
CONTROLLER_VS_SEQUENTIAL = 0.5
AT_REST_MAX_RSS_MIB = 100


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def copy_rows(case: dict) -> list[str]:
    rows = []
    for tool, figures in case["tools"].items():
        walls = figures["walls"]
        ratio = "" if tool == "pma2docker" else f"{figures['pma2docker_ratio']:.2f}"
        rows.append(
            f"| {tool} | {figures['median_wall']:.2f} | {min(walls):.2f}–{max(walls):.2f} "
            f"| {figures['median_rss_mib']:.1f} | {figures.get('median_cpu', float('nan')):.2f} | {ratio} |"
        )
    return rows


def copy_targets(results: dict) -> list[str]:
    rows = []
    for label in ("a", "b"):
        case = results.get("copy", {}).get(label)
        if not case:
            continue
        tools = case["tools"]
        fastest = min(PEERS, key=lambda peer: tools[peer]["median_wall"])
        ratio = tools["pma2docker"]["median_wall"] / tools[fastest]["median_wall"]
        rows.append(
            f"| {label}: median wall ≤ {SPEED_VS_FASTEST_PEER}× fastest peer | {tools['pma2docker']['median_wall']:.2f} s vs "
            f"{fastest} {tools[fastest]['median_wall']:.2f} s = {ratio:.2f}× (per-round ratio {tools[fastest]['pma2docker_ratio']:.2f}) "
            f"| {verdict(ratio <= SPEED_VS_FASTEST_PEER)} |"
        )
    case = results.get("copy", {}).get("c")
    if case:
        tools = case["tools"]
        mine, curl = tools["pma2docker"], tools["curl-pipe"]
        ratio = mine["median_wall"] / curl["median_wall"]
        rows.append(
            f"| c: median wall ≤ {LARGE_VS_CURL}× curl pipe | {mine['median_wall']:.2f} s vs {curl['median_wall']:.2f} s = "
            f"{ratio:.2f}× (per-round ratio {curl['pma2docker_ratio']:.2f}) | {verdict(ratio <= LARGE_VS_CURL)} |"
        )
        rows.append(
            f"| c: peak RSS ≤ {LARGE_MAX_RSS_MIB} MiB | {mine['median_rss_mib']:.1f} MiB (max {max(mine['rss_mib']):.1f}) "
            f"| {verdict(max(mine['rss_mib']) <= LARGE_MAX_RSS_MIB)} |"
        )
    return rows


def render_markdown(results: dict, command: str) -> str:
    machine = results["machine"]
    lines = [
        f"## Results: run of {results['date']}",
        "",
        f"Command: `{command}` ({results['runs']} counted runs per tool and case, after one warm-up round).",
        f"Machine: {machine['cpus']} cores, {machine['memory_gib']} GiB, {machine['cpu']}, Linux {machine['kernel']}; "
        f"load average {results['load_before'][0]:.2f} at the start and {results['load_after'][0]:.2f} at the end.",
        "",
        "| tool | version |",
        "| --- | --- |",
    ]
    lines += [f"| {tool} | {version} |" for tool, version in results["versions"].items()]

    targets = copy_targets(results)
    for label, case in results.get("copy", {}).items():
        lines += [
            "",
            f"### {CASE_TITLES[label]}: {case['blobs']} blobs, {case['bytes'] / (1 << 20):.1f} MiB",
            "",
            "| tool | median wall s | min–max s | median peak RSS MiB | median CPU s | pma2docker / tool (wall) |",
            "| --- | --- | --- | --- | --- | --- |",
            *copy_rows(case),
        ]

    if "rss" in results:
        lines += [
            "",
            "### pma2docker peak RSS by layer size (one platform, the large layer plus 16/32/64 MiB layers)",
            "",
            "| largest layer | median peak RSS MiB | max peak RSS MiB | median wall s | MiB/s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for figures in results["rss"].values():
            lines.append(
                f"| {figures['largest_layer'] / (1 << 20):.0f} MiB | {figures['median_rss_mib']:.1f} | {figures['max_rss_mib']:.1f} "
                f"| {figures['median_wall']:.2f} | {figures['mib_per_second']:.0f} |"
            )
        peaks = [figures["max_rss_mib"] for figures in results["rss"].values()]
        growth = max(peaks) - min(peaks)
        targets.append(
            f"| peak RSS flat across layer sizes (spread ≤ 8 MiB) | spread {growth:.1f} MiB | {verdict(growth <= 8)} |"
        )

    if "recopy" in results:
        lines += [
            "",
            "### Unchanged re-copy of the 5-platform index: HTTP requests in the registry access logs",
            "",
            "| tool | source | target | total | requests |",
            "| --- | --- | --- | --- | --- |",
        ]
        for tool, figures in results["recopy"].items():
            lines.append(
                f"| {tool} | {figures['source']} | {figures['target']} | {figures['total']} "
                f"| source: {figures['source_detail']}; target: {figures['target_detail']} |"
            )
        total = results["recopy"]["pma2docker"]["total"]
        targets.append(
            f"| unchanged re-copy ≤ {UNCHANGED_MAX_REQUESTS} requests | {total} | {verdict(total <= UNCHANGED_MAX_REQUESTS)} |"
        )

    controller = results.get("controller")
    if controller:
        lines += [
            "",
            "### Controller (the `single` image under distinct repositories, `interval: 1h`)",
            "",
            "| round | 200 sequential `crane copy` s | 200 ImageCopy objects until all Ready s | of which `kubectl create` s | ratio |",
            "| --- | --- | --- | --- | --- |",
        ]
        for number, round_figures in enumerate(controller["rounds"], start=1):
            lines.append(
                f"| {number} | {round_figures['crane_seconds']:.1f} | {round_figures['controller_seconds']:.1f} "
                f"| {round_figures.get('create_seconds', float('nan')):.1f} | {round_figures['ratio']:.2f} |"
            )
        ratio = controller["median_ratio"]
        targets.append(
            f"| 200 objects ≤ {CONTROLLER_VS_SEQUENTIAL}× sequential crane | {controller['median_controller_seconds']:.1f} s vs "
            f"{controller['median_crane_seconds']:.1f} s = {ratio:.2f}× | {verdict(ratio <= CONTROLLER_VS_SEQUENTIAL)} |"
        )
        if "rest_rss_mib" in controller:
            lines += [
                "",
                f"With {controller['objects']} objects, all Ready (the last 800 took {controller['fill_seconds']:.1f} s): "
                f"controller RSS at rest {controller['rest_rss_mib']:.1f} MiB, peak {controller['peak_rss_mib']:.1f} MiB "
                f"(idle with no objects: {controller['idle_rss_mib']:.1f} MiB); "
                f"{controller['requests']} registry requests in {controller['window_seconds']} s "
                f"({controller['requests_per_minute']:.1f} per minute; {controller['request_detail']}).",
            ]
            targets.append(
                f"| {controller['objects']} objects at rest ≤ {AT_REST_MAX_RSS_MIB} MiB RSS | {controller['rest_rss_mib']:.1f} MiB "
                f"| {verdict(controller['rest_rss_mib'] <= AT_REST_MAX_RSS_MIB)} |"
            )

    lines += ["", "### Targets", "", "| target | measured | result |", "| --- | --- | --- |", *targets, ""]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    results = json.loads(Path(sys.argv[1]).read_text())
    command = sys.argv[2] if len(sys.argv) == 3 else "tests/bench/run.sh"
    print(render_markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
