"""Fetch and prepare the Linux guest assets (see the package docstring)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmm.errors import ImageError
from vmm.image import Arm64Header, parse_arm64_header, unpack_kernel

KERNEL_META = "linux-image-arm64:arm64"  # Debian's meta package: depends on the current ABI's image
BUSYBOX = "busybox-static:arm64"
IMAGE_NAME = "Image"
INITRD_NAME = "initramfs.cpio"
STAMP_NAME = "packages.txt"  # the package versions the assets came from
CACHE_ENV = "MICROVM_LINUX_CACHE"

# Which kernel: "stable" is the release's own (6.1 on bookworm), from the system's apt sources;
# "backports" is <codename>-backports' (6.12 on bookworm), read through a temporary apt
# configuration that lists only that suite, so the system's apt setup is left alone.
# Each kernel's assets live in their own folder under cache_dir() ("stable": cache_dir() itself).
KERNELS = ("stable", "backports")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
OS_RELEASE = Path("/etc/os-release")

# The applets linked in /bin (busybox --install needs an arm64 host to run busybox itself).
APPLETS = (
    "sh", "ash", "cat", "cttyhack", "date", "dmesg", "echo", "env", "false", "grep", "halt", "hostname",
    "ls", "mkdir", "mount", "poweroff", "ps", "reboot", "rm", "seq", "setsid", "sleep", "sync", "true",
    "umount", "uname", "wc",
)

# /init: mount the pseudo file systems, take the console (the initramfs has no /dev/console
# node, so that building it needs no root), then an interactive shell with the prompt "# ".
INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
export PATH=/bin HOME=/ TERM=vt100 PS1='# '
echo "microvm-harness: busybox shell"
exec /bin/setsid /bin/cttyhack /bin/sh
"""


class AssetError(RuntimeError):
    """The assets could not be fetched or prepared (one line saying which step failed)."""


@dataclass(frozen=True)
class LinuxAssets:
    image: Path  # raw arm64 Image
    initrd: Path  # cpio newc initramfs
    kernel_package: str  # name=version
    busybox_package: str

    @property
    def header(self) -> Arm64Header:
        return image_header(self.image)


def cache_dir(kernel: str = "stable") -> Path:
    """Where the assets of `kernel` (one of KERNELS) live: $MICROVM_LINUX_CACHE or
    ~/.cache/microvm-harness/linux, and its `backports` subfolder for that kernel."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: one of {', '.join(KERNELS)}")
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path.home() / ".cache" / "microvm-harness" / "linux"
    return base if kernel == "stable" else base / kernel


def image_header(path: Path) -> Arm64Header:
    with open(path, "rb") as f:
        return parse_arm64_header(f.read(64), name=str(path))


def find_assets(directory: str | os.PathLike[str] | None = None) -> LinuxAssets | None:
    """The assets already prepared in `directory` (default cache_dir()), or None."""
    d = Path(directory) if directory is not None else cache_dir()
    stamp = d / STAMP_NAME
    image, initrd = d / IMAGE_NAME, d / INITRD_NAME
    if not (stamp.is_file() and image.is_file() and initrd.is_file()):
        return None
    lines = stamp.read_text().split()
    if len(lines) != 2:
        return None
    return LinuxAssets(image, initrd, lines[0], lines[1])


def _run(args: list[str], what: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, check=False, timeout=900)
    except FileNotFoundError:
        raise AssetError(f"{what}: {args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise AssetError(f"{what}: {args[0]} timed out") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise AssetError(f"{what}: {' '.join(args)} failed: {err[-1] if err else done.returncode}")
    return done.stdout.decode(errors="replace")


def _ensure_arm64() -> None:
    foreign = _run(["dpkg", "--print-foreign-architectures"], "checking dpkg architectures").split()
    if "arm64" in foreign:
        return
    _run(["dpkg", "--add-architecture", "arm64"], "adding the arm64 architecture")
    _run(["apt-get", "update", "-q"], "apt-get update")


def codename() -> str:
    """The Debian release this host runs (VERSION_CODENAME in /etc/os-release, e.g. bookworm)."""
    try:
        lines = OS_RELEASE.read_text(errors="replace").splitlines()[:100]
    except OSError as e:
        raise AssetError(f"{OS_RELEASE}: {e.strerror}") from None
    for line in lines:
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"').isalnum():
            return value.strip('"')
    raise AssetError(f"{OS_RELEASE}: no VERSION_CODENAME (not a Debian release?)")


def backports_apt(workdir: Path) -> list[str]:
    """apt options for a private configuration in `workdir` whose only source is the host
    release's backports suite; its package lists are fetched here (apt-get update)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sources = workdir / "sources.list"
    sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {codename()}-backports main\n")
    for d in ("lists/partial", "cache/archives/partial"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    options = [
        "-o", f"Dir::Etc::SourceList={sources}",
        "-o", f"Dir::Etc::SourceParts={workdir / 'sources.list.d'}",  # absent: no other sources
        "-o", f"Dir::State::Lists={workdir / 'lists'}",
        "-o", f"Dir::Cache={workdir / 'cache'}",
    ]
    _run(["apt-get", *options, "update", "-q"], "apt-get update (backports)")
    return options


def kernel_package(apt: list[str] | None = None) -> str:
    """The unsigned arm64 image of the ABI Debian's linux-image-arm64 points at now, found
    with apt-cache (e.g. linux-image-6.1.0-57-arm64-unsigned); `apt`: extra apt options
    (backports_apt)."""
    deps = _run(["apt-cache", *(apt or []), "depends", KERNEL_META], "resolving the kernel package")
    for line in deps.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            signed = line.split()[1].split(":")[0]
            return f"{signed}-unsigned"
    raise AssetError(f"resolving the kernel package: {KERNEL_META} has no linux-image dependency")


def _version(deb: Path) -> str:
    return _run(["dpkg-deb", "-W", "--showformat=${Package}=${Version}", str(deb)], f"reading {deb.name}").strip()


def _download(package: str, into: Path, apt: list[str] | None = None) -> Path:
    before = set(into.iterdir())
    _run(["apt-get", *(apt or []), "download", "-q", package], f"downloading {package}", cwd=into)
    new = [p for p in into.iterdir() if p not in before and p.suffix == ".deb"]
    if len(new) != 1:
        raise AssetError(f"downloading {package}: expected one .deb, found {len(new)}")
    return new[0]


def extract_image(vmlinuz: bytes, name: str) -> bytes:
    """The raw arm64 Image from a vmlinuz that is raw, gzip or EFI zboot (vmm.image.unpack_kernel)."""
    try:
        return unpack_kernel(vmlinuz, name=name)
    except ImageError as e:
        raise AssetError(str(e)) from None


def build_initramfs(busybox: Path, out: Path) -> None:
    """A cpio newc archive: /init, /bin/busybox and its applet links, empty /dev /proc /sys."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "tmp"):
            (root / d).mkdir()
        shutil.copyfile(busybox, root / "bin" / "busybox")
        (root / "bin" / "busybox").chmod(0o755)
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "init").write_text(INIT_SCRIPT)
        (root / "init").chmod(0o755)
        paths = sorted(root.rglob("*"))
        for p in paths:  # mtime 0: the archive's bytes do not depend on when it was built
            os.utime(p, (0, 0), follow_symlinks=False)
        names = [str(p.relative_to(root)) for p in paths]
        listing = ("\n".join(names) + "\n").encode()
        # --reproducible: inode numbers and device ids do not depend on the build host.
        _run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0", "-F", str(out)],
             "packing the initramfs with cpio", cwd=root, stdin=listing)


def fetch(directory: str | os.PathLike[str] | None = None, kernel: str = "stable") -> LinuxAssets:
    """Prepare the assets of `kernel` (one of KERNELS) in `directory` (default
    cache_dir(kernel)) unless they are there already."""
    d = Path(directory) if directory is not None else cache_dir(kernel)  # checks `kernel`
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: one of {', '.join(KERNELS)}")
    found = find_assets(d)
    if found is not None:
        return found
    d.mkdir(parents=True, exist_ok=True)
    _ensure_arm64()
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        work = Path(tmp)
        apt = backports_apt(work / "apt") if kernel == "backports" else None
        kdeb = _download(f"{kernel_package(apt)}:arm64", work, apt)
        bdeb = _download(BUSYBOX, work)
        _run(["dpkg-deb", "-x", str(kdeb), str(work / "k")], f"unpacking {kdeb.name}")
        _run(["dpkg-deb", "-x", str(bdeb), str(work / "b")], f"unpacking {bdeb.name}")
        vmlinuz = sorted((work / "k" / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise AssetError(f"{kdeb.name}: expected one /boot/vmlinuz-*, found {len(vmlinuz)}")
        image = extract_image(vmlinuz[0].read_bytes(), vmlinuz[0].name)
        (work / IMAGE_NAME).write_bytes(image)
        busybox = work / "b" / "bin" / "busybox"
        if not busybox.is_file():
            raise AssetError(f"{bdeb.name}: no /bin/busybox")
        build_initramfs(busybox, work / INITRD_NAME)
        versions = [_version(kdeb), _version(bdeb)]
        for name in (IMAGE_NAME, INITRD_NAME):
            os.replace(work / name, d / name)
        (d / STAMP_NAME).write_text("\n".join(versions) + "\n")  # last: marks the set complete
    found = find_assets(d)
    assert found is not None
    return found
