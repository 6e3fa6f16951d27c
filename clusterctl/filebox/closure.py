"""The shared libraries a binary needs, found the way `ldd` finds them (the dynamic loader included).

ldd asks the system's own loader, so the answer matches what runs on this machine: the same
search path, ld.so.cache and RPATHs. Its output is parsed by a pure function (parse_ldd) so the
formats (glibc, musl, static, vdso, 'not found') are tested on recorded text. ldd may run the
binary's own loader: give it binaries you trust, as you would run them.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from clusterctl.errors import UserError

if TYPE_CHECKING:
    from clusterctl.images.cache import BuildCache

ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3
# e_machine -> Docker's architecture names.
ELF_ARCH = {0x03: "386", 0x28: "arm", 0x3E: "amd64", 0xB7: "arm64", 0x15: "ppc64le", 0x16: "s390x", 0xF3: "riscv64"}

_ADDR = r"\(0x[0-9a-fA-F]+\)"
_LIB = re.compile(rf"^(?P<name>\S+) => (?P<path>\S.*?) {_ADDR}$")
_MISSING = re.compile(r"^(?P<name>\S+) => not found$")
_OLD_VDSO = re.compile(rf"^(?P<name>\S+) =>\s*{_ADDR}$")
_DIRECT = re.compile(rf"^(?P<path>\S.*?) {_ADDR}$")
_VERSION = re.compile(r"version `[^']+' not found \(required by .+\)$")
_MUSL_MISSING = re.compile(r"^Error loading shared library (?P<name>\S+): No such file or directory")


@dataclass(frozen=True)
class LddEntry:
    # lib: "name => /path"; direct: "/path" with no arrow (the loader, or a DT_NEEDED given as a
    # path); vdso: the kernel's virtual library, nothing to copy.
    kind: Literal["lib", "direct", "vdso"]
    name: str
    path: str | None = None


@dataclass(frozen=True)
class LddResult:
    entries: tuple[LddEntry, ...] = ()
    missing: tuple[str, ...] = ()
    version_errors: tuple[str, ...] = ()
    statically_linked: bool = False  # "statically linked" (static-pie)
    not_dynamic: bool = False  # "not a dynamic executable" (static, or not loadable here)
    unknown: tuple[str, ...] = ()


def parse_ldd(text: str) -> LddResult:
    """Parse ldd's output (stdout, optionally followed by stderr). Pure."""
    entries: list[LddEntry] = []
    missing: list[str] = []
    version_errors: list[str] = []
    unknown: list[str] = []
    static = not_dynamic = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("ldd: warning:"):
            continue
        if line == "statically linked":
            static = True
        elif line.endswith("not a dynamic executable"):
            not_dynamic = True
        elif m := _MISSING.match(line):
            missing.append(m["name"])
        elif m := _OLD_VDSO.match(line):
            entries.append(LddEntry("vdso", m["name"]))
        elif m := _LIB.match(line):
            entries.append(LddEntry("lib", m["name"], m["path"]))
        elif m := _DIRECT.match(line):
            path = m["path"]
            entries.append(LddEntry("direct", os.path.basename(path), path) if "/" in path else LddEntry("vdso", path))
        elif _VERSION.search(line):
            version_errors.append(line)
        elif m := _MUSL_MISSING.match(line):
            missing.append(m["name"])
        else:
            unknown.append(line)
    return LddResult(tuple(entries), tuple(missing), tuple(version_errors), static, not_dynamic, tuple(unknown))


@dataclass(frozen=True)
class ElfInfo:
    arch: str
    interpreter: str | None  # PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2; None when static


def read_elf(path: str) -> ElfInfo | None:
    """Architecture and program interpreter of an ELF file; None if it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != ELF_MAGIC:
            return None
        bits, endian = head[4], "<" if head[5] == 1 else ">"
        (machine,) = struct.unpack_from(endian + "H", head, 18)
        if bits == 2:
            (phoff,) = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        else:
            (phoff,) = struct.unpack_from(endian + "I", head, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 42)
        arch = ELF_ARCH.get(machine, f"elf-machine-{machine}")
        if machine == 0x15 and endian == ">":
            arch = "ppc64"
        interp = None
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(min(phnum, len(table) // max(phentsize, 1))):
            ph = table[i * phentsize : (i + 1) * phentsize]
            (p_type,) = struct.unpack_from(endian + "I", ph, 0)
            if p_type != PT_INTERP:
                continue
            if bits == 2:
                (offset,) = struct.unpack_from(endian + "Q", ph, 8)
                (filesz,) = struct.unpack_from(endian + "Q", ph, 32)
            else:
                (offset,) = struct.unpack_from(endian + "I", ph, 4)
                (filesz,) = struct.unpack_from(endian + "I", ph, 16)
            f.seek(offset)
            interp = f.read(min(filesz, 4096)).split(b"\0", 1)[0].decode("utf-8", "surrogateescape") or None
            break
        return ElfInfo(arch, interp)


@dataclass(frozen=True)
class Lib:
    soname: str  # the name the loader looks for, and the file's name in the filebox
    path: str  # where ldd found it (the path a microcontainer links)
    real_path: str  # symlinks followed: the bytes to copy
    loader: bool = False


@dataclass(frozen=True)
class Closure:
    given: str  # what the user wrote ("node", "/usr/bin/node")
    path: str  # absolute path, symlinks not followed
    real_path: str  # symlinks followed: the bytes to copy
    arch: str
    interpreter: str | None
    libs: tuple[Lib, ...]  # the loader included; empty for a static binary

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def static(self) -> bool:
        return not self.libs


def locate(binary: str) -> str:
    """An absolute path for what the user gave: a path, or a bare name looked up on PATH."""
    if not binary:
        raise UserError("empty binary name")
    if "/" not in binary:
        found = shutil.which(binary)
        if not found:
            raise UserError(f"{binary}: not found on PATH; give its full path")
        return os.path.abspath(found)
    return os.path.abspath(os.path.expanduser(binary))


def resolve_closure(
    binary: str | os.PathLike, *, ldd: str = "ldd", timeout: float = 60.0, cache: BuildCache | None = None
) -> Closure:
    """The binary and every shared library it loads, per ldd; a UserError (one line) otherwise.
    With a build cache (images/cache.py): what ldd answered before, while the binary, every
    library it found, ldd and the loader's own files are as they were then."""
    if cache is None:
        return _resolve_closure(binary, ldd=ldd, timeout=timeout)
    given = os.fspath(binary)
    try:
        path = locate(given)
    except UserError:
        return _resolve_closure(binary, ldd=ldd, timeout=timeout)  # says why
    key = cache.closure_key(given, path, ldd, os.environ)
    found = cache.closure(key)
    if found is not None:
        try:
            libs = tuple(Lib(str(lib["soname"]), str(lib["path"]), str(lib["real_path"]), bool(lib["loader"])) for lib in found["libs"])
            return Closure(given, str(found["path"]), str(found["real_path"]), str(found["arch"]), found["interpreter"], libs)
        except (KeyError, TypeError, ValueError):
            pass  # not what this code writes: resolved again
    closure = _resolve_closure(binary, ldd=ldd, timeout=timeout)
    doc = {
        "path": closure.path, "real_path": closure.real_path, "arch": closure.arch, "interpreter": closure.interpreter,
        "libs": [{"soname": lib.soname, "path": lib.path, "real_path": lib.real_path, "loader": lib.loader} for lib in closure.libs],
    }  # fmt: skip
    cache.remember_closure(key, doc, [closure.path, *(lib.path for lib in closure.libs)])
    return closure


def _resolve_closure(binary: str | os.PathLike, *, ldd: str, timeout: float) -> Closure:
    given = os.fspath(binary)
    path = locate(given)
    if not os.path.lexists(path):
        raise UserError(f"{given}: no such file")
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise UserError(f"{given}: broken symlink (to {real})")
    if not os.path.isfile(real):
        raise UserError(f"{given}: not a regular file")
    try:
        elf = read_elf(real)
    except OSError as exc:
        raise UserError(f"{given}: cannot read: {exc.strerror or exc}") from None
    if elf is None:
        raise UserError(f"{given}: not an ELF binary (a script or a text file?); the filebox takes compiled executables")
    env = dict(os.environ, LC_ALL="C", LANG="C")
    try:
        proc = subprocess.run([ldd, real], capture_output=True, text=True, errors="replace", timeout=timeout, env=env)
    except FileNotFoundError:
        raise UserError(f"{given}: cannot list its libraries: {ldd} not found (install libc-bin)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{given}: ldd took longer than {timeout:.0f}s") from None
    result = parse_ldd(proc.stdout + "\n" + proc.stderr)
    if result.not_dynamic:
        if elf.interpreter:
            raise UserError(f"{given}: ldd cannot load this {elf.arch} binary here (another architecture or libc?)")
        return Closure(given, path, real, elf.arch, None, ())
    if result.missing:
        names = ", ".join(dict.fromkeys(result.missing))
        raise UserError(
            f"{given}: shared libraries not found: {names} (ldd says 'not found'; install them on this machine)"
        )
    if result.version_errors:
        raise UserError(f"{given}: {result.version_errors[0]}")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{given}: ldd failed (exit {proc.returncode}): {last}")
    if result.unknown:
        raise UserError(f"{given}: unexpected ldd output: {result.unknown[0]!r}")
    if result.statically_linked:
        return Closure(given, path, real, elf.arch, elf.interpreter, ())
    libs: dict[str, Lib] = {}
    for e in result.entries:
        if e.kind == "vdso" or e.path is None:
            continue
        if e.kind == "lib" and e.path == elf.interpreter:
            continue  # musl: libc is the loader itself, listed once more under its soname
        loader = e.kind == "direct" and (e.path == elf.interpreter or elf.interpreter is None)
        soname = os.path.basename(e.path) if e.kind == "direct" else e.name
        lib_real = os.path.realpath(e.path)
        if not os.path.isfile(lib_real):
            raise UserError(f"{given}: ldd lists {e.path}, which is not a file")
        libs.setdefault(soname, Lib(soname, e.path, lib_real, loader))
    if elf.interpreter and not any(lib.loader for lib in libs.values()):
        # ldd always lists the loader; should it not, take it from PT_INTERP.
        interp_real = os.path.realpath(elf.interpreter)
        if not os.path.isfile(interp_real):
            raise UserError(f"{given}: its loader {elf.interpreter} is missing on this machine")
        soname = os.path.basename(elf.interpreter)
        libs[soname] = Lib(soname, elf.interpreter, interp_real, True)
    return Closure(given, path, real, elf.arch, elf.interpreter, tuple(sorted(libs.values(), key=lambda lib: lib.soname)))
