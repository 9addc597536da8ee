#!/usr/bin/env python3
"""Generate the benchmark disk image and its 1%-changed variant.

Layout, per 1 MiB block, from a seeded generator so every run builds the same image:
40% zeros (left as holes, as in real thin-provisioned disks), 30% incompressible random
data, 30% copies of earlier random blocks (cloned data that deduplication should find).

    make-image.py PATH SIZE_MIB                 # the image
    make-image.py --mutate PATH PERCENT [SEED]  # overwrite PERCENT of 64 KiB blocks at random
"""
import os
import random
import sys

MIB = 1024 * 1024


def make(path, size_mib, seed=2026):
    rng = random.Random(seed)
    pool = []
    with open(path, "wb") as out:
        out.truncate(size_mib * MIB)
        for block in range(size_mib):
            kind = rng.random()
            if kind < 0.40:
                continue  # hole
            if kind < 0.70 or not pool:
                data = rng.randbytes(MIB)
                if len(pool) < 256:
                    pool.append(data)
            else:
                data = pool[rng.randrange(len(pool))]
            out.seek(block * MIB)
            out.write(data)


def mutate(path, percent, seed=7):
    rng = random.Random(seed)
    size = os.path.getsize(path)
    blocks = size // (64 * 1024)
    count = int(blocks * percent / 100)
    with open(path, "r+b") as out:
        for block in rng.sample(range(blocks), count):
            out.seek(block * 64 * 1024)
            out.write(rng.randbytes(64 * 1024))


if __name__ == "__main__":
    if sys.argv[1] == "--mutate":
        mutate(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 7)
    else:
        make(sys.argv[1], int(sys.argv[2]))
