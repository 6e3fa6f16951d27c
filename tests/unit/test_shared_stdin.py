"""One script, one stdin, two commands that read it: the secret files first (exactly their
bundle's bytes), then an image stream (the rest). Run in a local shell with a stand-in for
`docker load` that keeps what it read."""

import subprocess

import pytest

from clusterctl.commands.base import Cmd, ChainedStdin, Script
from clusterctl.commands.files import write_secret_tree


class Stream:
    def __init__(self, data: bytes):
        self.data = data

    def describe(self) -> str:
        return f"an image stream, {len(self.data)} bytes"

    def write_to(self, write) -> None:
        for i in range(0, len(self.data), 4096):
            write(self.data[i : i + 4096])


def test_the_files_take_their_bytes_and_the_load_the_rest(tmp_path):
    root, loaded = tmp_path / "root", tmp_path / "loaded"
    files = {"consul/services/web.json": b'{"token": "s3cret"}', "passing/web.json": b"{}"}
    image = bytes(range(256)) * 400  # more than tar's read-ahead
    script = Script((write_secret_tree(str(root), files, "register web"), Cmd(("sh", "-c", 'cat > "$1"', "sh", str(loaded)), "load", stdin=Stream(image))))
    stdin = script.stdin
    assert isinstance(stdin, ChainedStdin) and "not shown" in stdin.describe() and "an image stream" in stdin.describe()
    sent: list[bytes] = []
    stdin.write_to(sent.append)
    run = subprocess.run(["sh", "-c", script.render()], input=b"".join(sent), capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert (root / "consul/services/web.json").read_bytes() == b'{"token": "s3cret"}' and (root / "passing/web.json").read_bytes() == b"{}"
    assert loaded.read_bytes() == image


def test_only_bounded_readers_may_come_before_another():
    unbounded = Cmd(("cat",), "read all", stdin=b"x")
    with pytest.raises(ValueError, match="one command only"):
        Script((unbounded, Cmd(("cat",), "read the rest", stdin=b"y")))
    assert Script((unbounded,)).stdin == b"x" and Script((Cmd(("true",)),)).stdin is None
    chained = Script((write_secret_tree("/r", {"a": b"s3cret"}), Cmd(("cat",), "rest", stdin=b"hunter2"))).stdin
    assert "s3cret" not in repr(chained) and "hunter2" not in repr(chained) and "hunter2" not in chained.describe()
