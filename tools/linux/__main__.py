"""`python -m tools.linux fetch`: fetch and prepare the Linux guest assets; print where they are."""
from __future__ import annotations

import argparse
import sys

from tools.linux.assets import KERNELS, AssetError, cache_dir, fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.linux", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the kernel and busybox with apt; build the initramfs")
    f.add_argument("--kernel", choices=KERNELS, default="stable",
                   help="stable: the release's kernel (6.1 on bookworm); backports: its backports suite's (6.12)")
    f.add_argument("--dir", default=None, help=f"cache folder (default {cache_dir()}, and backports/ in it for that kernel)")
    args = parser.parse_args(argv)
    try:
        assets = fetch(args.dir, args.kernel)
    except AssetError as e:
        print(f"tools.linux: {e}", file=sys.stderr)
        return 1
    print(f"kernel:    {assets.image}  ({assets.kernel_package})")
    print(f"initramfs: {assets.initrd}  ({assets.busybox_package})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
