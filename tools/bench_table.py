#!/usr/bin/env python3
"""Prints the eval/reports/benchmarks.md table lines from criterion's results and a peer's JSON.

    tools/bench_table.py rain PEER_JSON MACHINE
    tools/bench_table.py metrics PEER_JSON MACHINE

(tools/bench.sh runs the benchmarks and calls this.)
"""
import json
import pathlib
import sys


def median_ms(group, name):
    path = pathlib.Path("target/criterion") / group / name / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"] / 1e6


def rain(peer, machine):
    g = "rain_1280x720"
    one, par = median_ms(g, "heavy_1_thread"), median_ms(g, "heavy_all_threads")
    yield (f"rain renderer, heavy, 1280x720, 1 thread | `tools/bench.sh` (criterion `{g}/heavy/1_thread`) | {machine} | "
           f"{one:.2f} ms | {peer['peer']}: {peer['median_ms']:.2f} ms | {peer['median_ms'] / one:.1f}x faster")
    yield (f"rain renderer, heavy, 1280x720, all threads | `tools/bench.sh` (criterion `{g}/heavy/all_threads`) | {machine} | "
           f"{par:.2f} ms | 1-thread raincheck: {one:.2f} ms | {one / par:.2f}x scaling")
    for p in ("drizzle", "torrential"):
        yield f"rain renderer, {p}, 1280x720, 1 thread | criterion `{g}/{p}/1_thread` | {machine} | {median_ms(g, p + '_1_thread'):.2f} ms | |"


def metrics(peer, machine):
    g = "metrics_1280x720"
    one, par8 = median_ms(g, "psnr_y+ssim_y_1_thread"), median_ms(g, "psnr_y+ssim_y_8_pairs_all_threads")
    yield (f"psnr_y + ssim_y, one 1280x720 pair, 1 thread | criterion `{g}/psnr_y+ssim_y/1_thread` | {machine} | "
           f"{one:.2f} ms | {peer['peer']}: {peer['median_ms']:.1f} ms | {peer['median_ms'] / one:.1f}x faster")
    yield (f"psnr_y + ssim_y, 8 pairs, all threads | criterion `{g}/psnr_y+ssim_y/8_pairs_all_threads` | {machine} | "
           f"{par8 / 8:.2f} ms per pair | 1 thread: {one:.2f} ms | {one * 8 / par8:.2f}x")
    yield f"all four metrics, one 1280x720 pair, 1 thread | criterion `{g}/all_four/1_thread` | {machine} | {median_ms(g, 'all_four_1_thread'):.2f} ms | |"


if __name__ == "__main__":
    kind, peer, machine = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    for line in {"rain": rain, "metrics": metrics}[kind](peer, machine):
        print(f"| {line} |")
