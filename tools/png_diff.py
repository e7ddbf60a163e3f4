#!/usr/bin/env python3
"""Largest and mean absolute difference between same-named 8-bit RGB(A) PNGs in two folders.

    tools/png_diff.py DIR_A DIR_B        prints one JSON object: per-file and overall max/mean

Standard library only (zlib): it runs on GPU machines that have no numpy or Pillow. Used by
tools/gpu-check.sh to compare CUDA output frames with CPU ones.
"""
import json
import pathlib
import struct
import sys
import zlib


def read_png(path):
    data = pathlib.Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, width = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color not in (2, 6) or interlace:
                raise ValueError(f"{path}: only 8-bit RGB/RGBA, non-interlaced PNGs")
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    if channels == 4:
        rows = [bytearray(v for i, v in enumerate(r) if i % 4 != 3) for r in rows]
    return width, height, b"".join(rows)


def main():
    a, b = map(pathlib.Path, sys.argv[1:3])
    files, worst, total, count = {}, 0, 0, 0
    for pa in sorted(a.glob("*.png")):
        pb = b / pa.name
        wa, ha, xa = read_png(pa)
        wb, hb, xb = read_png(pb)
        if (wa, ha) != (wb, hb):
            raise SystemExit(f"{pa.name}: {wa}x{ha} vs {wb}x{hb}")
        diffs = [abs(p - q) for p, q in zip(xa, xb)]
        files[pa.name] = {"max": max(diffs), "mean": sum(diffs) / len(diffs)}
        worst, total, count = max(worst, max(diffs)), total + sum(diffs), count + len(diffs)
    if not files:
        raise SystemExit(f"{a}: no PNG files")
    print(json.dumps({"files": files, "max": worst, "mean": total / count}))


if __name__ == "__main__":
    main()
