"""Linux guest assets: a stock Debian arm64 kernel and a busybox initramfs (`python -m tools.linux`).

`fetch()` downloads Debian's `linux-image-<abi>-arm64-unsigned` and `busybox-static:arm64` with
apt (`dpkg --add-architecture arm64`, `apt-get download`, `dpkg-deb -x`), extracts the kernel's
raw arm64 Image (from a raw, gzip or EFI-zboot vmlinuz) and packs busybox into a cpio newc
initramfs with Debian's `cpio` tool. Results go to `cache_dir()` (default
~/.cache/microvm-harness/linux, or $MICROVM_LINUX_CACHE). Idempotent: a second call reuses them.
`fetch(kernel="backports")` takes the kernel from the host release's backports suite (6.12 on
bookworm) through a private apt configuration, into the `backports` subfolder.
"""
from tools.linux.assets import (
    AssetError,
    LinuxAssets,
    cache_dir,
    extract_image,
    fetch,
    find_assets,
    image_header,
)

__all__ = ["AssetError", "LinuxAssets", "cache_dir", "extract_image", "fetch", "find_assets", "image_header"]
