"""Filter-bank energy of an image larger than any worker's memory, with
fastim2col.dask on a dask.distributed cluster.

    image.zarr (on disk) -> conv2d with a bank of Gabor filters -> square ->
    sum over the filters -> energy.zarr (on disk)

By default a LocalCluster of 2 worker processes, each with a memory limit
(400 MB) well below the image (16384 x 16384 float32: 1 GiB; the filter
responses would be 16 GiB): the image is read, filtered and written back
chunk by chunk, with a progress bar. Needs ``pip install "fastim2col[dask]"``.

    python examples/dask_filter_bank.py                       # 1 GiB image, local cluster
    python examples/dask_filter_bank.py --size 512 --check    # small, checked in memory
    python examples/dask_filter_bank.py --scheduler tcp://10.0.0.5:8786 --workdir /shared/x

--scheduler connects to a running cluster (``dask scheduler`` + ``dask worker``
on its machines) instead of starting one: --workdir must then be a path every
worker can read and write (a shared file system), or a zarr URL they reach.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def gabor_bank(n_filters: int, size: int, dtype=np.float32) -> np.ndarray:
    """(n_filters, 1, size, size) zero-mean Gabor filters: orientations x 2 scales."""
    half = size // 2
    yy, xx = np.mgrid[-half:size - half, -half:size - half].astype(np.float64)
    filters = []
    for i in range(n_filters):
        theta = np.pi * (i // 2) / max(1, n_filters // 2)
        wavelength = size / 2 if i % 2 == 0 else size / 3.5
        u = xx * np.cos(theta) + yy * np.sin(theta)
        envelope = np.exp(-(xx ** 2 + yy ** 2) / (2 * (size / 4) ** 2))
        g = envelope * np.cos(2 * np.pi * u / wavelength)
        g -= g.mean()
        filters.append(g / np.abs(g).sum())
    return np.stack(filters)[:, None].astype(dtype)


def energy(image, bank):
    """Filter-bank energy of a (H, W) dask image: sum over filters of the squared responses."""
    import fastim2col.dask as fd
    responses = fd.conv2d(image[None, None], bank, padding="same")   # (1, F, H, W), lazy
    return (responses ** 2).sum(axis=1)[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384, help="image side (pixels)")
    parser.add_argument("--chunk", type=int, default=1024, help="zarr/dask chunk side")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--kernel", type=int, default=7, help="filter side")
    parser.add_argument("--workers", type=int, default=2, help="local cluster workers")
    parser.add_argument("--memory-limit", default="400MB", help="per local worker")
    parser.add_argument("--scheduler", help="address of a running cluster, e.g. tcp://host:8786")
    parser.add_argument("--workdir", help="where image.zarr and energy.zarr go (default: a "
                        "temporary folder)")
    parser.add_argument("--check", action="store_true",
                        help="also compute in memory and compare (small sizes only)")
    args = parser.parse_args(argv)

    import dask.array as da
    from distributed import Client, LocalCluster, progress

    workdir = args.workdir or tempfile.mkdtemp(prefix="fastim2col-dask-")
    image_path = os.path.join(workdir, "image.zarr")
    energy_path = os.path.join(workdir, "energy.zarr")
    if args.scheduler:
        cluster = None
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               memory_limit=args.memory_limit, dashboard_address=None)
        client = Client(cluster)
    try:
        image_bytes = args.size ** 2 * 4
        print(f"image {args.size} x {args.size} float32 ({image_bytes / 2**20:.0f} MiB), "
              f"chunks {args.chunk}, {args.filters} filters {args.kernel}x{args.kernel}, "
              f"cluster {client.scheduler.address} with {len(client.nthreads())} workers")
        # The image is made on the workers, straight into zarr: never whole in memory.
        rng = da.random.default_rng(0)
        image = rng.standard_normal((args.size, args.size), chunks=args.chunk,
                                    dtype=np.float32)
        write = da.to_zarr(image, image_path, overwrite=True, compute=False)
        client.compute(write).result()

        bank = gabor_bank(args.filters, args.kernel)
        image = da.from_zarr(image_path)
        store = da.to_zarr(energy(image, bank), energy_path, overwrite=True, compute=False)
        start = time.perf_counter()
        future = client.compute(store)
        progress(future)
        future.result()
        elapsed = time.perf_counter() - start
        print(f"\nenergy written to {energy_path} in {elapsed:.1f} s "
              f"({args.size ** 2 / elapsed / 1e6:.1f} Mpixel/s)")
        if args.check:
            import fastim2col
            x = np.asarray(da.from_zarr(image_path))[None, None]
            want = (fastim2col.conv2d(x, bank, padding="same") ** 2).sum(axis=1)[0]
            got = np.asarray(da.from_zarr(energy_path))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.max()))
            print("energy matches the in-memory result")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
