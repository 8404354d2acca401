"""Benchmark of fastim2col.dask (docs/performance.md, "Dask"): a filter bank on
a large image, in memory vs a dask.distributed LocalCluster vs dask-image.

    python tools/dask_bench.py                      # 6k x 6k, 16 filters 7x7, 2 workers
    python tools/dask_bench.py --size 2000 --skip-dask-image

Times (best and median of --repeat, interleaved):
- in memory: one fastim2col.conv2d call on the whole image (all cores), and
  the filter-bank energy (conv -> square -> sum over filters);
- cluster: --workers worker processes x 1 thread, the image already on the
  workers in --chunk chunks; the responses persisted on the workers (conv
  only), and the energy computed and gathered to the client;
- dask-image: dask_image.ndfilters.correlate once per filter on the same
  cluster and chunks, squared and summed (the energy).
Needs the dask extra and dask-image (pip install dask-image).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--chunk", type=int, default=1500)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-dask-image", action="store_true")
    parser.add_argument("--scaling", action="store_true",
                        help="instead: throughput of the persisted conv with 1..--workers "
                        "workers x 1 thread, each task on 1 kernel thread")
    args = parser.parse_args(argv)
    if args.scaling:
        return scaling(args)

    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import fastim2col
    import fastim2col.dask as fd
    sys.path.insert(0, __file__.rsplit("/tools/", 1)[0] + "/examples")
    from dask_filter_bank import gabor_bank

    rng = np.random.default_rng(0)
    image = rng.standard_normal((args.size, args.size), dtype=np.float32)
    bank = gabor_bank(args.filters, args.kernel)
    print(f"image {args.size}x{args.size} float32, {args.filters} filters "
          f"{args.kernel}x{args.kernel}, chunks {args.chunk}, fastim2col "
          f"{fastim2col.__version__} on {fastim2col.get_num_threads()} threads")

    x = image[None, None]
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=0,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        # The image on the workers before any timing, as it is in memory for
        # the in-memory call (scattered once, not embedded in every graph).
        x_d = da.from_delayed(client.scatter(image, broadcast=False), image.shape, image.dtype)
        x_d = client.persist(x_d.rechunk(args.chunk))
        wait(x_d)

        def persisted_conv():
            y = client.persist(fd.conv2d(x_d[None, None], bank, padding="same"))
            wait(y)
            del y

        def energy():
            responses = fd.conv2d(x_d[None, None], bank, padding="same")
            return client.compute((responses ** 2).sum(axis=1)[0]).result()

        got = energy()
        want = (fastim2col.conv2d(x, bank, padding="same") ** 2).sum(axis=1)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.max()))
        del got, want
        # Interleaved, best of --repeat each: the machine may be shared, and a
        # busy spell then hits both sides rather than one.
        times: dict[str, list[float]] = {"conv": [], "energy": [], "c_conv": [], "c_energy": []}
        runs = {"conv": lambda: fastim2col.conv2d(x, bank, padding="same"),
                "energy": lambda: (fastim2col.conv2d(x, bank, padding="same") ** 2).sum(axis=1),
                "c_conv": persisted_conv, "c_energy": energy}
        for _ in range(args.repeat):
            for key, run in runs.items():
                times[key].append(best_of(1, run))
        t_conv, t_energy, c_conv, c_energy = (min(times[k]) for k in runs)
        median = {k: float(np.median(v)) for k, v in times.items()}
        print(f"in memory: conv {t_conv:.2f} s, energy {t_energy:.2f} s "
              f"(medians {median['conv']:.2f}, {median['energy']:.2f})")
        print(f"cluster ({args.workers} workers x 1 thread): conv {c_conv:.2f} s "
              f"({c_conv / t_conv:.2f}x in memory), energy {c_energy:.2f} s "
              f"({c_energy / t_energy:.2f}x in memory) (medians {median['c_conv']:.2f} s = "
              f"{median['c_conv'] / median['conv']:.2f}x, {median['c_energy']:.2f} s = "
              f"{median['c_energy'] / median['energy']:.2f}x)")

        if not args.skip_dask_image:
            from dask_image.ndfilters import correlate

            def dask_image_energy():
                total = None
                for f in bank[:, 0]:
                    r = correlate(x_d, f, mode="constant") ** 2
                    total = r if total is None else total + r
                return client.compute(total).result()

            t_image = best_of(1, dask_image_energy)
            print(f"dask-image correlate, one filter at a time: energy {t_image:.2f} s "
                  f"(fastim2col.dask {t_image / c_energy:.1f}x faster)")


def scaling(args) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import fastim2col.dask as fd
    sys.path.insert(0, __file__.rsplit("/tools/", 1)[0] + "/examples")
    from dask_filter_bank import gabor_bank
    bank = gabor_bank(args.filters, args.kernel)
    for workers in range(1, args.workers + 1):
        with LocalCluster(n_workers=workers, threads_per_worker=1, memory_limit=0,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            rng = da.random.default_rng(0)
            x_d = client.persist(rng.standard_normal((1, 1, args.size, args.size),
                                                     chunks=(1, 1, args.chunk, args.chunk),
                                                     dtype=np.float32))
            wait(x_d)

            def persisted_conv():
                y = client.persist(fd.conv2d(x_d, bank, padding="same", threads=1))
                wait(y)
                del y
            persisted_conv()   # warm-up: imports and first plans in each worker
            seconds = best_of(args.repeat, persisted_conv)
            print(f"{workers} worker(s) x 1 thread: conv {seconds:.2f} s, "
                  f"{args.size ** 2 / seconds / 1e6:.1f} Mpixel/s")


if __name__ == "__main__":
    main()
