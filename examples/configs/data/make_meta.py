"""Regenerates the .npy arrays of examples/configs/meta/sinusoid-npy.toml (python3 only,
no numpy: the files are written with the .npy v1.0 format directly).

Four sinusoid tasks y = A sin(x - p) with 5 support and 6 query points each, x in
[-5, 5]; an initial θ for the MLP 1-8-8-1 (97 parameters, flat layout: W1 [1, 8], b1,
W2 [8, 8] row-major, b2, W3 [8, 1], b3) and Meta-SGD's initial α (97 values).
"""
import math
import random
import struct


def save(name, values, shape):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (%s), }" % (
        "".join(f"{d}, " for d in shape) if len(shape) == 1 else ", ".join(map(str, shape))
    )
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(name, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(struct.pack(f"<{len(values)}d", *values))


rng = random.Random(3)
tasks = [(rng.uniform(0.1, 5.0), rng.uniform(0.0, math.pi)) for _ in range(4)]
for part, n in [("support", 5), ("query", 6)]:
    xs = [rng.uniform(-5.0, 5.0) for _ in range(4 * n)]
    ys = [a * math.sin(x - p) for i, x in enumerate(xs) for (a, p) in [tasks[i // n]]]
    save(f"meta_{part}_x.npy", xs, (4, n))
    save(f"meta_{part}_y.npy", ys, (4, n))
widths = [1, 8, 8, 1]
theta = []
for fi, fo in zip(widths, widths[1:]):
    bound = 1.0 / math.sqrt(fi)
    theta += [rng.uniform(-bound, bound) for _ in range((fi + 1) * fo)]
save("meta_theta0.npy", theta, (len(theta),))
save("meta_alpha0.npy", [0.01 + 0.01 * (i % 3) for i in range(len(theta))], (len(theta),))
