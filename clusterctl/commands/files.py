"""Writing files on hosts: atomic (temp file + rename), content as data, never as shell text."""

from __future__ import annotations

import hashlib

from clusterctl.commands.base import Cmd, sh_args

WRITE = 'umask 077; mkdir -p "$(dirname "$1")" && printf "%s" "$2" > "$1.tmp" && chmod "$3" "$1.tmp" && mv -f "$1.tmp" "$1"'
WRITE_STDIN = 'umask 077; mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"'


def sha256(content: str | bytes) -> str:
    return hashlib.sha256(content.encode() if isinstance(content, str) else content).hexdigest()


def write_file(path: str, content: str, mode: str = "0644", description: str = "") -> Cmd:
    """Content travels as an argument (visible in a dry run); use write_secret for secrets."""
    return sh_args(WRITE, path, content, mode, description=description or f"write {path}")


def write_secret(path: str, content: bytes, mode: str = "0600", description: str = "") -> Cmd:
    """Content travels on stdin: never on a command line, never in a dry run's output."""
    cmd = sh_args(WRITE_STDIN, path, mode, description=description or f"write {path} (secret)")
    return Cmd(cmd.argv, cmd.description, cmd.check, stdin=content)


# One stdin carries several secret files (a Script feeds stdin to one command): a tar unpacked in
# a private temp dir beside the target, then each file renamed into place, 0600.
WRITE_MANY = (
    'umask 077; mkdir -p "$1" && t=$(mktemp -d "$1/.clusterctl.XXXXXX") && tar -x -o -C "$t" -f - && '
    'for f in "$t"/*; do chmod 600 "$f" && mv -f "$f" "$1/"; done; rmdir "$t"'
)


# The same into several directories under one root (names: relative paths, e.g. a service's
# definition and its env file): each file's directory is made 0700 if missing.
WRITE_TREE = (
    'umask 077; mkdir -p "$1" && t=$(mktemp -d "$1/.clusterctl.XXXXXX") && tar -x -o -C "$t" -f - && '
    '(cd "$t" && find . -type f) | while read -r f; do f=${f#./}; mkdir -p "$1/${f%/*}" && chmod 600 "$t/$f" && '
    'mv -f "$t/$f" "$1/$f"; done; rm -rf "$t"'
)


def secrets_bundle(files: dict[str, bytes], nested: bool = False) -> bytes:
    """A tar of files (sorted, mode 0600, owner 0, mtime 0), for WRITE_MANY (flat names) or
    WRITE_TREE (nested: relative paths of plain names)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            parts = name.split("/")
            if (not nested and len(parts) > 1) or any(not p or p.startswith(".") for p in parts):
                raise ValueError(f"a secret file name must be {'a relative path' if nested else 'flat'}: {name!r}")
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o600, 0
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


class SecretFiles:
    """stdin of write_secrets: the bundle, described without its content (dry runs, reports)."""

    def __init__(self, files: dict[str, bytes], nested: bool = False) -> None:
        self._data = secrets_bundle(files, nested)
        self.names = tuple(sorted(files))

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"SecretFiles({', '.join(self.names)})"

    def describe(self) -> str:
        return f"{', '.join(self.names)} (not shown)"

    def write_to(self, write) -> None:  # noqa: ANN001 - a bytes sink
        write(self._data)


def write_secrets(directory: str, files: dict[str, bytes], description: str = "") -> Cmd:
    """Several files into `directory` from stdin (never on a command line or in a dry run)."""
    cmd = sh_args(WRITE_MANY, directory, description=description or f"write {', '.join(sorted(files))} in {directory}")
    return Cmd(cmd.argv, cmd.description, cmd.check, stdin=SecretFiles(files))


def write_secret_tree(root: str, files: dict[str, bytes], description: str = "") -> Cmd:
    """Files at paths relative to `root` from stdin, 0600, in one command. It reads exactly its
    bundle's bytes (`head -c`: tar reads ahead), so a later command of the script can read what
    follows on the same stdin (an image stream)."""
    bundle = SecretFiles(files, nested=True)
    script = WRITE_TREE.replace('tar -x -o -C "$t" -f -', 'head -c "$2" | tar -x -o -C "$t" -f -')
    cmd = sh_args(script, root, str(len(bundle)), description=description or f"write {', '.join(sorted(files))} under {root}")
    return Cmd(cmd.argv, cmd.description, cmd.check, stdin=bundle, stdin_bounded=True)
