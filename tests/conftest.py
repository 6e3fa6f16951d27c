"""Shared fixtures. End-to-end tests share ONE lab per test session (the machine has 2 cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CLI:
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "clusterctl", *args],
            capture_output=True, text=True, env=self.env, timeout=timeout, input=input,
        )  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen:
        """clusterctl in the background (stdout, stderr piped), with faulthandler on (see ended())
        and Ctrl-C's default action: a shell's background job (pytest started with `&`) ignores
        SIGINT, and its children inherit that."""
        return subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "clusterctl", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip

    def json(self, *args: str, **kw) -> tuple[int, dict]:
        proc = self(*args, "--output", "json", **kw)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-2000:]}") from None


def ended(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of a process from CLI.start once it ends; one still running after
    `timeout` fails the test with every thread's stack (SIGABRT: faulthandler prints them)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        raise AssertionError(f"clusterctl still ran {timeout}s later; its threads then:\n{err[-8000:]}") from None


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clusterctl-state")


@pytest.fixture(scope="session")
def cli(state_dir) -> CLI:
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=str(state_dir), COLUMNS="200", NO_COLOR="1")
    return CLI(env)
