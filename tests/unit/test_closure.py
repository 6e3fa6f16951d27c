"""The ldd parser on recorded output, and the resolver on real files of this machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from clusterctl.errors import UserError
from clusterctl.filebox.closure import LddEntry, parse_ldd, read_elf, resolve_closure

# Recorded on Debian 12 (glibc 2.36): `ldd /usr/bin/node` (Node.js 20) and `ldd consul` (1.8.7, bullseye).
NODE_LDD = """\
\tlinux-vdso.so.1 (0x00007f62c7067000)
\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f62c704d000)
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f62c6e00000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f62c6d20000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f62c702d000)
\tlibpthread.so.0 => /lib/x86_64-linux-gnu/libpthread.so.0 (0x00007f62c7028000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f62c6b3e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f62c7069000)
"""
CONSUL_LDD = """\
\tlinux-vdso.so.1 (0x00007ff509708000)
\tlibpthread.so.0 => /lib/x86_64-linux-gnu/libpthread.so.0 (0x00007ff5096ee000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ff50950c000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007ff50970a000)
"""
# /usr/bin/ls with its libselinux.so.1 renamed in .dynstr.
NOT_FOUND_LDD = """\
\tlinux-vdso.so.1 (0x00007f88e7d90000)
\tlibselinuz.so.1 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f88e7b73000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f88e7d92000)
"""
STATIC_PIE_LDD = "\tstatically linked\n"
STATIC_LDD = "\tnot a dynamic executable\n"  # on stderr, exit 1 (gcc -static, Go binaries)
# Older glibc printed the vdso with an empty arrow; i386 calls it linux-gate.
OLD_VDSO_LDD = "\tlinux-vdso.so.1 =>  (0x00007ffd5a1f2000)\n\tlinux-gate.so.1 (0xf7f1c000)\n"
MUSL_LDD = """\
\t/lib/ld-musl-x86_64.so.1 (0x7f3a1c1d5000)
\tlibstdc++.so.6 => /usr/lib/libstdc++.so.6 (0x7f3a1bf7e000)
\tlibc.musl-x86_64.so.1 => /lib/ld-musl-x86_64.so.1 (0x7f3a1c1d5000)
Error loading shared library libuv.so.1: No such file or directory (needed by /usr/bin/node)
"""
VERSION_LDD = (
    "/usr/bin/node: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found (required by /usr/bin/node)\n"
    + NODE_LDD
)


def test_node_closure_is_every_library_and_the_loader():
    r = parse_ldd(NODE_LDD)
    assert not (r.missing or r.unknown or r.statically_linked or r.not_dynamic)
    libs = {e.name: e.path for e in r.entries if e.kind == "lib"}
    assert libs == {
        "libdl.so.2": "/lib/x86_64-linux-gnu/libdl.so.2",
        "libstdc++.so.6": "/lib/x86_64-linux-gnu/libstdc++.so.6",
        "libm.so.6": "/lib/x86_64-linux-gnu/libm.so.6",
        "libgcc_s.so.1": "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "libpthread.so.0": "/lib/x86_64-linux-gnu/libpthread.so.0",
        "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    }
    assert [e for e in r.entries if e.kind == "direct"] == [
        LddEntry("direct", "ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2")
    ]
    assert [e.name for e in r.entries if e.kind == "vdso"] == ["linux-vdso.so.1"]


def test_consul_closure():
    r = parse_ldd(CONSUL_LDD)
    assert [(e.kind, e.name) for e in r.entries] == [
        ("vdso", "linux-vdso.so.1"),
        ("lib", "libpthread.so.0"),
        ("lib", "libc.so.6"),
        ("direct", "ld-linux-x86-64.so.2"),
    ]


def test_not_found_is_reported_by_name():
    r = parse_ldd(NOT_FOUND_LDD)
    assert r.missing == ("libselinuz.so.1",)
    assert "libselinuz.so.1" not in {e.name for e in r.entries}


def test_static_forms():
    assert parse_ldd(STATIC_PIE_LDD).statically_linked
    assert parse_ldd(STATIC_LDD).not_dynamic
    assert parse_ldd(STATIC_LDD).entries == ()


def test_vdso_forms_are_never_files():
    r = parse_ldd(OLD_VDSO_LDD)
    assert [(e.kind, e.name, e.path) for e in r.entries] == [
        ("vdso", "linux-vdso.so.1", None),
        ("vdso", "linux-gate.so.1", None),
    ]


def test_musl_format_and_its_missing_message():
    r = parse_ldd(MUSL_LDD)
    assert ("direct", "/lib/ld-musl-x86_64.so.1") in {(e.kind, e.path) for e in r.entries}
    assert r.missing == ("libuv.so.1",)


def test_version_errors_and_warnings_and_unknown_lines():
    assert parse_ldd(VERSION_LDD).version_errors
    assert parse_ldd("ldd: warning: you do not have execution permission for `/x'\n" + CONSUL_LDD).unknown == ()
    assert parse_ldd("something else entirely\n").unknown == ("something else entirely",)


# --- the resolver, on this machine's files ------------------------------------------------


def _need(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} not on this machine")


def test_resolver_on_node():
    _need("/usr/bin/node")
    c = resolve_closure("/usr/bin/node")
    assert c.given == "/usr/bin/node" and c.name == "node"
    assert c.arch in ("amd64", "arm64")
    loaders = [lib for lib in c.libs if lib.loader]
    assert len(loaders) == 1 and loaders[0].path == c.interpreter
    assert {"libc.so.6", "libstdc++.so.6"} <= {lib.soname for lib in c.libs}
    for lib in c.libs:
        assert os.path.isfile(lib.real_path) and not os.path.islink(lib.real_path)
    assert not any(lib.soname.startswith("linux-vdso") for lib in c.libs)


def test_resolver_follows_symlinks_and_keeps_the_given_name(tmp_path):
    _need("/usr/bin/node")
    link1 = tmp_path / "nodejs"
    link1.symlink_to("/usr/bin/node")
    link2 = tmp_path / "mynode"
    link2.symlink_to(link1)
    c = resolve_closure(str(link2))
    assert c.given == str(link2) and c.name == "mynode"
    assert c.real_path == os.path.realpath("/usr/bin/node")


def test_resolver_by_name_on_path():
    _need("/usr/bin/node")
    assert resolve_closure("node").real_path == os.path.realpath(shutil.which("node"))


def test_static_binary_has_an_empty_closure():
    _need("/bin/busybox")
    c = resolve_closure("/bin/busybox")
    assert c.static and c.libs == () and c.interpreter is None


def test_non_elf_file_is_one_clear_line(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    with pytest.raises(UserError, match=r"run\.sh: not an ELF binary") as exc:
        resolve_closure(str(script))
    assert "\n" not in str(exc.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match=r"/nope/consul: no such file"):
        resolve_closure("/nope/consul")
    with pytest.raises(UserError, match="not a regular file"):
        resolve_closure(str(tmp_path))
    with pytest.raises(UserError, match="not found on PATH"):
        resolve_closure("no-such-binary-anywhere")


def test_not_found_library_fails_naming_it(tmp_path):
    _need("/usr/bin/ls")
    data = Path("/usr/bin/ls").read_bytes()
    if b"libselinux.so.1" not in data:
        pytest.skip("this ls does not link libselinux")
    bad = tmp_path / "ls-bad"
    bad.write_bytes(data.replace(b"libselinux.so.1", b"libselinuz.so.1"))
    bad.chmod(0o755)
    with pytest.raises(UserError, match=r"ls-bad: shared libraries not found: libselinuz\.so\.1") as exc:
        resolve_closure(str(bad))
    assert "\n" not in str(exc.value)


def test_read_elf():
    _need("/usr/bin/node")
    info = read_elf("/usr/bin/node")
    assert info is not None and info.interpreter and info.interpreter.startswith("/")
    assert read_elf(__file__) is None
