"""The local lab 'default' carries the article's hello example when this machine can build it,
and says why not otherwise; its file is a valid cluster file; the asking line is valid sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from clusterctl.config.loader import load_text
from clusterctl.lab.example import APP, URL, ask_line, example_sections, is_example
from clusterctl.lab.lab import LabHost, render_cluster_file


def _app(tmp_path: Path, modules: bool = True) -> Path:
    app = tmp_path / "hello"
    app.mkdir()
    (app / "clusterctl-app.yaml").write_text("name: hello\ncommand: [node, express.js]\nport: 3000\n")
    if modules:
        (app / "node_modules").mkdir()
    return app


def test_the_example_is_node_in_the_filebox_and_hello_as_a_service(tmp_path):
    sections, why = example_sections(_app(tmp_path), node="/usr/bin/node")
    assert why is None
    assert sections["filebox"] == {"binaries": ["consul", "node"]}
    assert sections["services"] == [{"name": "hello", "app": str(tmp_path / "hello"), "replicas": 2, "check": {"http": "/"}}]


def test_without_node_or_its_modules_the_example_is_left_out_and_says_why(tmp_path):
    assert example_sections(_app(tmp_path, modules=False), node="/usr/bin/node") == ({}, f"{tmp_path}/hello/node_modules is missing (scripts/setup.sh installs it with npm)")
    _, why = example_sections(tmp_path / "hello", node="")
    assert why is not None and "node" in why
    assert example_sections(tmp_path / "nowhere", node="/usr/bin/node")[1].endswith("no clusterctl-app.yaml")


def test_the_default_labs_file_with_the_example_is_a_valid_cluster_file(tmp_path):
    hosts = [LabHost(f"node{i}", f"c{i}", f"10.9.0.{10 + i}") for i in (1, 2, 3)]
    sections, _ = example_sections(_app(tmp_path), node="/usr/bin/node")
    text = render_cluster_file("default", hosts, tmp_path / "key", tmp_path / "known", extra=sections)
    assert "hello app as a service" in text.splitlines()[1]
    (tmp_path / "key").write_text("not read")
    cluster = load_text(text, str(tmp_path / "cluster.yaml"))
    assert [s.name for s in cluster.spec.services] == ["hello"]
    assert is_example(cluster, tmp_path / "cluster.yaml")
    assert not is_example(cluster, tmp_path / "other.yaml")
    plain = yaml.safe_load(render_cluster_file("default", hosts, tmp_path / "key", tmp_path / "known"))
    assert "services" not in plain and "filebox" not in plain


def test_the_asking_line_is_valid_sh_and_asks_the_consul_name():
    line = ask_line()
    assert subprocess.run(["sh", "-n", "-c", line]).returncode == 0
    assert URL == "http://hello.service.consul:3000/" and URL in line
    assert APP.name == "hello" and (APP / "clusterctl-app.yaml").is_file()
