"""The reproduction's data, compressed to travel to the GPU machine and unpacked there (docs/RESULTS.md).

The device command carries at most 64 MiB with the repository (~4 MB) and the wheels (5.5 MB), and the
whole packed corpus is 64 MiB of uint16 shards: xz (Python's lzma, preset 6) brings a shard to ~57%, so the
whole corpus travels. The trainer keeps reading plain .npy files: the GPU session unpacks first.

    python -m reproduce.travel pack      # here: runs/h200-data -> .device (prepare_h200_data.py runs it)
    python3 -m reproduce.travel unpack   # on the GPU machine: .device -> runs/h200-data (session.py runs it)

`pack(plain, travel)` writes every file under `plain` as travel/<same path>.xz and an index,
travel/TRAVEL.json (each file's size, compressed size and sha256); `unpack(travel, plain)` writes them back
in parallel processes (one per core: 16 on the GPU machine), checks each against the index, and skips
files already unpacked.
Machine-specific defaults: .device is the folder our device command carries (`carry: [".device", ".whl"]`);
runs/h200-data, being outside it, survives a later call that carries .device again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import lzma
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from ufbert_jax import io

FORMAT = "ufbert-jax-travel/1"
INDEX = "TRAVEL.json"
SUFFIX = ".xz"
PRESET = 6  # xz's default; 9 and --extreme gave the same size on our 2 MiB shards (their dictionary is 8 MiB)
PLAIN = Path("runs/h200-data")
TRAVEL = Path(".device")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack_one(source: str, target: str) -> dict:
    data = Path(source).read_bytes()
    packed = lzma.compress(data, preset=PRESET)
    io.write_bytes(target, packed)
    return {"bytes": len(data), "xz_bytes": len(packed), "sha256": _sha256(data)}


def _unpack_one(source: str, target: str, entry: dict) -> bool:
    """Writes `target` from `source` unless it already holds the indexed bytes; True when it wrote."""
    target_path = Path(target)
    if target_path.is_file() and target_path.stat().st_size == entry["bytes"]:
        if _sha256(target_path.read_bytes()) == entry["sha256"]:
            return False
    data = lzma.decompress(Path(source).read_bytes())
    if len(data) != entry["bytes"] or _sha256(data) != entry["sha256"]:
        raise io.FileFormatError(f"{source}: unpacks to {len(data)} bytes that do not match {INDEX}")
    io.write_bytes(target_path, data)
    return True


def _map(function, argument_lists: list[tuple], workers: int | None) -> list:
    """function(*arguments) for each tuple, in `workers` processes (default: all cores; 1: in this one)."""
    workers = min(workers or os.cpu_count() or 1, len(argument_lists))
    if workers <= 1:
        return [function(*arguments) for arguments in argument_lists]
    # spawn, not fork: the caller may hold JAX or tokenizers threads, which fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(function, *zip(*argument_lists, strict=True)))


def pack(plain: str | Path, travel: str | Path, workers: int | None = None) -> dict:
    """Writes every file under `plain` compressed into `travel` (emptied first) with its index; returns it.

    `travel` must be empty, absent or an earlier pack's folder (with TRAVEL.json): anything else is refused
    rather than deleted."""
    plain, travel = Path(plain), Path(travel)
    files = sorted(p.relative_to(plain).as_posix() for p in plain.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{plain} holds no files to pack")
    if travel.exists() and any(travel.iterdir()):
        if not (travel / INDEX).is_file():
            raise FileExistsError(f"{travel} is not empty and holds no {INDEX}: empty it or pass another")
        shutil.rmtree(travel)
    start = time.perf_counter()
    arguments = [(str(plain / name), str(travel / f"{name}{SUFFIX}")) for name in files]
    entries = dict(zip(files, _map(_pack_one, arguments, workers), strict=True))
    index = {
        "format": FORMAT,
        "codec": f"xz (lzma preset {PRESET})",
        "bytes": sum(e["bytes"] for e in entries.values()),
        "xz_bytes": sum(e["xz_bytes"] for e in entries.values()),
        "files": entries,
    }
    io.write_text(travel / INDEX, json.dumps(index, indent=1) + "\n")
    print(
        f"packed {len(files)} files of {plain} into {travel}: {index['bytes'] / 2**20:.1f} MiB -> "
        f"{index['xz_bytes'] / 2**20:.1f} MiB ({index['xz_bytes'] / index['bytes']:.1%}) in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return index


def unpack(travel: str | Path, plain: str | Path, workers: int | None = None) -> dict:
    """Writes every file of `travel`'s index into `plain`, checked against its size and sha256; returns
    the index. Files already there with the right contents are kept, so a second call only checks."""
    travel, plain = Path(travel), Path(plain)
    index = io.read_json(travel / INDEX)
    if index.get("format") != FORMAT:
        raise io.FileFormatError(f"{travel / INDEX}: format {index.get('format')!r}, expected {FORMAT!r}")
    start = time.perf_counter()
    arguments = [
        (str(travel / f"{name}{SUFFIX}"), str(plain / name), entry) for name, entry in index["files"].items()
    ]
    written = sum(_map(_unpack_one, arguments, workers))
    print(
        f"unpacked {travel} into {plain}: {written} of {len(arguments)} files written "
        f"({index['xz_bytes'] / 2**20:.1f} -> {index['bytes'] / 2**20:.1f} MiB) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("pack", "unpack"))
    parser.add_argument("--plain", type=Path, default=PLAIN, help="the plain files (default %(default)s)")
    parser.add_argument("--travel", type=Path, default=TRAVEL, help="the copy that travels (%(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.plain, args.travel, args.workers)
    else:
        unpack(args.travel, args.plain, args.workers)


if __name__ == "__main__":
    main()
