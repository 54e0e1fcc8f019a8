"""The CLI-input class: every file and path a user hands the `microvm` command, made hostile.

Each case runs `microvm` in this process (under a watchdog; stdout and stderr captured) with one
hostile input: a --snapshot-dir that cannot be a folder, --mmds-data or --input that is a FIFO,
a device, too big, or JSON built to exhaust the parser (huge integers, deep nesting), a guest
image that is a FIFO, a device, a huge sparse file, or an ELF with a hostile program-header
table (many, huge, overlapping or out-of-RAM segments, truncated data), plus a control that
must run. A survivor ends with status 2 and one line on stderr naming the problem, no
traceback, within CASE_SECONDS, having written nothing, or (the controls) runs normally.
Random cases are drawn from `rng`, so the campaign also reaches the neighbours of the issue's
inputs. Closed and full stdout need a shell: `stdout_cases` run in subprocesses.
"""
from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tools.faults.outcome import Hang, Stopwatch, Trial, Verdict, describe_exception, failed, watchdog
from vmm.layout import RAM_BASE

CASE_SECONDS = 5.0  # wall-time bound on one case; the slowest took 1.4 s on a loaded 2-core machine (rejection is immediate)
MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CliCase:
    """argv for `microvm`, made by `setup(directory)`; `expect` is the exit status, `message`
    a fragment the one stderr line must contain (None: a control that must succeed)."""

    name: str
    setup: Callable[[Path], list[str]]
    expect: int = 2
    message: str | None = None


def elf_image(segments: list[tuple[int, bytes, int]], entry: int, *, phnum: int | None = None) -> bytes:
    """An ELF64 AArch64 executable with these (p_paddr, file bytes, p_memsz) PT_LOAD segments
    (Elf64_Ehdr 64 bytes, Elf64_Phdr 56); `phnum` overrides e_phnum (a lying header)."""
    count = len(segments) if phnum is None else phnum
    ehdr = struct.pack("<4s5B7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 2, 183, 1, entry, 64, 0, 0, 64, 56, count, 0, 0, 0)
    offset = 64 + 56 * len(segments)
    phdrs, body = b"", b""
    for pa, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset + len(body), pa, pa, len(data), memsz, 0x1000)
        body += data
    return ehdr + phdrs + body


def _file(name: str, data: bytes | str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    return make


def _fifo(d: Path) -> Path:
    p = d / "fifo"
    os.mkfifo(p)
    return p


def _sparse(size: int) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / "sparse.bin"
        with open(p, "wb") as f:
            f.truncate(size)
        return p

    return make


def _paths(d: Path) -> dict[str, Path]:
    """Hostile places that are not usable folders."""
    (d / "afile").write_bytes(b"x")
    return {"file": d / "afile", "under-file": d / "afile" / "sub", "dev-null": Path("/dev/null"), "fifo": _fifo(d), "too-long": d / ("n" * 300)}


def fixed_cases() -> list[CliCase]:
    """The issue's inputs, one each, and controls that must still work."""
    run_dir = ["run", "hello", "--snapshot-at", "0", "--snapshot-dir"]
    cases = [CliCase(f"snapshot-dir:{k}", lambda d, k=k: [*run_dir, str(_paths(d)[k])], message="--snapshot-dir") for k in ("file", "under-file", "dev-null", "fifo", "too-long")]
    for flag, guest in (("--mmds-data", "mmds"), ("--input", "echo")):
        cases += [
            CliCase(f"{flag}:fifo", lambda d, f=flag, g=guest: ["run", g, f, str(_fifo(d))], message="not a regular file"),
            CliCase(f"{flag}:dev-zero", lambda d, f=flag, g=guest: ["run", g, f, "/dev/zero"], message="not a regular file"),
            CliCase(f"{flag}:sparse", lambda d, f=flag, g=guest: ["run", g, f, str(_sparse(8 << 30)(d))], message="are accepted"),
            CliCase(f"{flag}:missing", lambda d, f=flag, g=guest: ["run", g, f, str(d / "nope")], message="cannot read"),
        ]
    cases += [
        CliCase("image:fifo", lambda d: ["run", str(_fifo(d))], message="not a regular file"),
        CliCase("image:dev-zero", lambda d: ["run", "/dev/zero"], message="not a regular file"),
        CliCase("image:sparse-4g", lambda d: ["run", str(_sparse(4 << 30)(d))], message="are accepted"),
        CliCase("image:elf-3000-segments", lambda d: ["run", str(_file("m.elf", elf_image([(RAM_BASE, b"", 8 * MIB)] * 3000, RAM_BASE))(d))], message="program-header table"),
        CliCase("control:hello", lambda d: ["run", "hello", "-q"], expect=0),
        CliCase("control:echo-input", lambda d: ["run", "echo", "-q", "--input", str(_file("k", "hi q")(d))], expect=0),
        CliCase("control:snapshot-dir", lambda d: [*run_dir, str(d / "new" / "deeper"), "-q"], expect=0),
    ]
    return cases


def _json_bomb(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("digits", "array", "object", "mixed", "garbage", "big"))
    depth = rng.randint(129, 200_000)
    if kind == "digits":
        return '{"n": ' + "7" * rng.randint(4301, 200_000) + "}", "not valid JSON"
    # Deep nesting is refused before parsing (the store's depth scan: "nests deeper").
    if kind == "array":
        return "[" * depth + "]" * depth, "MMDS data"
    if kind == "object":
        depth = min(depth, 5_000)
        return '{"a": ' * depth + "0" + "}" * depth, "MMDS data"
    if kind == "mixed":
        depth = rng.randint(129, 800)
        return "".join(rng.choice(('[', '{"k": ')) for _ in range(depth)), "MMDS data"
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))).decode("latin-1"), "MMDS data"
    return '{"k": "' + "x" * rng.randint(1 << 20, 3 << 20) + '"}', "MMDS data"


def _elf_bomb(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(("many", "overlap", "outside", "huge", "truncated", "lying-phnum"))
    at = RAM_BASE + 2 * MIB
    if kind == "many":
        return elf_image([(at, b"", rng.randint(1, 16) * MIB)] * rng.randint(74, 4000), at), "program-header table"
    if kind == "overlap":
        n = rng.randint(2, 73)
        return elf_image([(at + rng.randrange(0, 4 * MIB, 4096), b"", 8 * MIB) for _ in range(n)], at), "overlaps"
    if kind == "outside":
        pa = rng.choice((0, RAM_BASE - 4096, RAM_BASE + rng.randint(128, 4096) * MIB, (1 << 64) - 4096))
        return elf_image([(pa, b"\0" * 16, 4096)], pa), "does not fit"
    if kind == "huge":
        return elf_image([(at, b"", rng.randint(1 << 32, 1 << 62))], at), "does not fit"
    if kind == "truncated":
        return elf_image([(at, b"\x1f\x20\x03\xd5" * 4, 4096)], at)[: -rng.randint(1, 15)], "truncated"
    return elf_image([(at, b"", 4096)], at, phnum=rng.choice((0xFFFF, 2000, 300))), "program-header table"


def random_cases(rng: random.Random, count: int) -> Iterator[CliCase]:
    """`count` cases drawn from the neighbours of the fixed ones."""
    for i in range(count):
        family = rng.choice(("mmds", "elf", "dir"))
        if family == "mmds":
            text, message = _json_bomb(rng)
            yield CliCase(f"random:mmds:{i}", lambda d, t=text: ["run", "mmds", "--mmds-data", str(_file("data.json", t)(d))], message=message)
        elif family == "elf":
            blob, message = _elf_bomb(rng)
            yield CliCase(f"random:elf:{i}", lambda d, b=blob: ["run", str(_file("g.elf", b)(d)), "--mem-mib", "128"], message=message)
        else:
            key = rng.choice(("file", "under-file", "dev-null", "fifo", "too-long"))
            depth = rng.randint(0, 3)
            yield CliCase(f"random:dir:{key}:{i}", lambda d, k=key, n=depth: ["run", "hello", "--snapshot-at", "0", "--snapshot-dir", str(_paths(d)[k].joinpath(*["x"] * n) if k != "under-file" else _paths(d)[k])], message="--snapshot-dir")


def run_case(case: CliCase, directory: Path) -> Trial:
    """Run one case in a fresh `directory` and judge it (see the module docstring)."""
    from vmm.cli import main

    directory.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(directory):
        p = directory / name
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        else:
            p.unlink()
    clock = Stopwatch()
    out, err = io.TextIOWrapper(io.BytesIO(), write_through=True), io.StringIO()
    try:
        argv = case.setup(directory)
        before = set(os.listdir(directory))
        with watchdog(CASE_SECONDS), redirect_stdout(out), redirect_stderr(err):  # type: ignore[type-var]
            status = main(argv)
    except Hang as exc:
        return failed(case.name, Verdict.HANG, str(exc), seconds=clock.seconds)
    except BaseException as exc:  # noqa: BLE001 - anything escaping main() is the finding
        return failed(case.name, Verdict.WRONG_EXCEPTION, describe_exception(exc), seconds=clock.seconds)
    text = err.getvalue()
    seconds = clock.seconds
    if seconds > CASE_SECONDS:
        return failed(case.name, Verdict.HANG, f"took {seconds:.1f} s", seconds=seconds)
    if "Traceback" in text or "Exception ignored" in text:
        return failed(case.name, Verdict.WRONG_EXCEPTION, text.strip().splitlines()[-1], seconds=seconds)
    if status != case.expect:
        return failed(case.name, Verdict.VIOLATION, f"exit {status}, expected {case.expect}: {text.strip()[:200]}", seconds=seconds)
    if case.message is not None:
        if text.count("\n") != 1 or case.message not in text:
            return failed(case.name, Verdict.VIOLATION, f"not one line naming {case.message!r}: {text[:200]!r}", seconds=seconds)
        if set(os.listdir(directory)) != before:
            return failed(case.name, Verdict.VIOLATION, "a refused command wrote files", seconds=seconds)
    return Trial(case.name, Verdict.SURVIVED, "", seconds, (case.name.split(":")[0] if not case.name.startswith("random") else ":".join(case.name.split(":")[:2]),))


def stdout_cases() -> list[tuple[str, str, int, str]]:
    """(name, shell redirection, expected status, stderr fragment) for stdout that cannot be written."""
    return [
        ("stdout:closed", ">&-", 2, "standard output is closed"),
        ("stdout:full", ">/dev/full", 2, "No space left on device"),
        ("stdout:full-json", "--json >/dev/full", 2, "No space left on device"),
        ("stdout:pipe-closed", "| head -c 1 >/dev/null", 141, ""),
    ]


def run_stdout_case(name: str, redirect: str, expect: int, message: str) -> Trial:
    clock = Stopwatch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    guest = "memwalk --param rounds=0 --max-instructions 20000000" if "pipe" in name else "hello -q"
    command = f"{sys.executable} -m vmm run {guest} {redirect}; echo \"status=${{PIPESTATUS[0]}}\" >&2"
    try:
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=CASE_SECONDS * 3)
    except subprocess.TimeoutExpired:
        return failed(name, Verdict.HANG, "no exit", seconds=clock.seconds)
    lines = proc.stderr.strip().splitlines()
    status = int(lines[-1].split("=")[1]) if lines and lines[-1].startswith("status=") else -1
    body = "\n".join(lines[:-1])
    if "Traceback" in body:
        return failed(name, Verdict.WRONG_EXCEPTION, body.splitlines()[-1], seconds=clock.seconds)
    if status != expect or message not in body or "fault" in body:
        return failed(name, Verdict.VIOLATION, f"exit {status}: {body[:200]}", seconds=clock.seconds)
    return Trial(name, Verdict.SURVIVED, "", clock.seconds, ("stdout",))
