"""Input generator for exactly_once_stream.py.

Writes --files JSON-lines files into --input; record ids 0..--ids-1 each
appear in exactly two different files (so deduplication must hold across
micro-batches, which is what the state store is for). Files are written in a
staging folder and renamed into --input, so the stream never sees a partial
file. Standard library only.

Usage: python exactly_once_gen.py --input DIR --ids 2000 --files 40 [--seed 7]
       [--first-id 0 --first-file 0]   (to append a further, disjoint round of input)
"""

import argparse
import json
import os
import random


def assignments(ids, files, first_id=0):
    """Maps file index -> ids; each id lands in two distinct files."""
    if files < 2:
        raise SystemExit("--files must be at least 2 (each id goes to two different files)")
    out = [[] for _ in range(files)]
    step = max(1, files // 2)
    for i in range(first_id, first_id + ids):
        first = i % files
        second = (first + step) % files
        out[first].append(i)
        out[second].append(i)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--ids", type=int, default=2000)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--first-id", type=int, default=0)
    ap.add_argument("--first-file", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    os.makedirs(args.input, exist_ok=True)
    staging = args.input.rstrip("/") + ".staging"
    os.makedirs(staging, exist_ok=True)
    for n, ids in enumerate(assignments(args.ids, args.files, args.first_id), start=args.first_file):
        rng.shuffle(ids)
        name = f"part-{n:05d}.json"
        tmp = os.path.join(staging, name)
        with open(tmp, "w") as f:
            for i in ids:
                f.write(json.dumps({"id": i, "file": n}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(args.input, name))
    os.rmdir(staging)
    print(json.dumps({"input": args.input, "first_id": args.first_id, "ids": args.ids, "files": args.files}))


if __name__ == "__main__":
    main()
