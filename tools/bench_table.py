#!/usr/bin/env python3
"""Prints the eval/reports/benchmarks.md table lines from criterion's results and a peer's JSON.

    tools/bench_table.py rain PEER_JSON MACHINE
    tools/bench_table.py metrics PEER_JSON MACHINE
    tools/bench_table.py derain PEER_JSON MACHINE
    tools/bench_table.py cyclegan PEER_JSON MACHINE
    tools/bench_table.py stream '{"stats": ["STATS.json", ...]}' MACHINE

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


def derain(peer, machine):
    g = "derain"
    torch = peer["peer"]
    rows = [
        ("unet tiny, de-rain one 960x540 frame", "unet_tiny/infer_960x540", "unet_tiny_infer_960x540_ms"),
        ("unet tiny, training step (batch 8, 128x128, AdamW)", "unet_tiny/train_step_b8_128", "unet_tiny_train_step_b8_128_ms"),
        ("vit tiny, de-rain one 960x540 frame (256-px tiles)", "vit_tiny/infer_960x540", "vit_tiny_infer_960x540_ms"),
        ("vit tiny, training step (batch 8, 128x128, AdamW)", "vit_tiny/train_step_b8_128", "vit_tiny_train_step_b8_128_ms"),
        ("6 conv3x3 32ch, batch 4, 128x128, forward", "conv6_32ch_b4_128/raincheck_fwd", "conv6_fwd_ms"),
        ("6 conv3x3 32ch, batch 4, 128x128, forward + backward", "conv6_32ch_b4_128/raincheck_fwd_bwd", "conv6_fwd_bwd_ms"),
    ]
    for what, bench, key in rows:
        ours = median_ms(g, bench.replace("/", "_"))
        fps = f" ({1e3 / ours:.1f} frames/s)" if "frame" in what else ""
        yield (f"{what}, all cores | criterion `{g}/{bench}` | {machine} | {ours:.1f} ms{fps} | "
               f"{torch} twin: {peer[key]:.1f} ms | {peer[key] / ours:.2f}x")
    old = median_ms(g, "conv6_32ch_b4_128_candle_fwd_bwd")
    new = median_ms(g, "conv6_32ch_b4_128_raincheck_fwd_bwd")
    yield (f"the same, candle 0.11's own conv2d (its backward uses conv_transpose2d) | criterion `{g}/conv6_32ch_b4_128/candle_fwd_bwd` | {machine} | "
           f"{old:.1f} ms | raincheck's conv: {new:.1f} ms | {old / new:.2f}x")


def cyclegan(peer, machine):
    g = "cyclegan"
    torch = peer["peer"]
    rows = [
        ("CycleGAN training step (batch 1, 128x128, ngf 64, 6 blocks, two PatchGANs, Adam)", "train_step_b1_128"),
        ("CycleGAN generator (ngf 64, 9 blocks), translate one 960x540 frame", "translate_960x540"),
    ]
    for what, bench in rows:
        ours = median_ms(g, bench)
        theirs = peer[f"cyclegan/{bench}"]
        yield (f"{what}, all cores | criterion `{g}/{bench}` | {machine} | {ours:.0f} ms | "
               f"{torch} reference networks: {theirs:.0f} ms | {theirs / ours:.2f}x")


def stream(peer, machine):
    """One line per `raincheck stream --stats-json` file (tools/bench_stream.sh)."""
    command = peer.get("command", "tools/bench_stream.sh")
    for path in peer["stats"]:
        st = json.loads(pathlib.Path(path).read_text())
        m, lat = st["model"], st["latency_ms"]
        w, h = st["processing"]
        arch = m["name"].split(" ")[0]
        run = pathlib.Path(m["name"].split("(", 1)[1].rstrip(")")).name
        yield (f"stream {run} ({arch}), {w}x{h}, {m['device']} {m['dtype']}, {st['frames_out']} frames, file mode | "
               f"`{command}` | {machine} | {st['throughput_fps']:.1f} frames/s end to end | "
               f"model p50 {lat['model']['p50']:.1f} ms (p95 {lat['model']['p95']:.1f}), end-to-end latency p50 "
               f"{lat['end_to_end']['p50']:.0f} ms | {1e3 / lat['model']['p50']:.1f} frames/s model alone")


if __name__ == "__main__":
    kind, peer, machine = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    for line in {"rain": rain, "metrics": metrics, "derain": derain, "cyclegan": cyclegan, "stream": stream}[kind](peer, machine):
        print(f"| {line} |")
