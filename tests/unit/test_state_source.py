"""A cluster's state dir records the cluster file it is for: two files whose names collide only
because both are cluster.yaml do not share one state dir (its known_hosts, keys, tokens)."""

import subprocess
import sys

from clusterctl.state import SOURCE_FILE, cluster_dir, cluster_path, other_source, recorded_source

BODY = "ssh: {known_hosts: kh, connect_timeout: 1}\nconsul: {enabled: false}\nfilebox: {binaries: []}\nhosts:\n  - {name: a, address: 127.0.0.1, port: 1}\n"


def _cluster_file(folder, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.yaml"
    path.write_text((f"name: {name}\n" if name else "") + BODY)
    return path


def _run(tmp_path, *args):
    env = {"CLUSTERCTL_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin:/usr/local/bin", "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "clusterctl", *args], capture_output=True, text=True, env=env)


def test_the_dir_records_its_file_and_knows_another(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path / "state"))
    first, second = _cluster_file(tmp_path / "a"), _cluster_file(tmp_path / "b")
    directory = cluster_dir("cluster", first)
    assert (directory / SOURCE_FILE).read_text() == f"{first.resolve()}\n"
    assert recorded_source(directory) == first.resolve()
    assert other_source(directory, first) is None
    assert other_source(directory, second) == first.resolve()
    # Using the dir for another file keeps the first file's record.
    cluster_dir("cluster", second)
    assert recorded_source(directory) == first.resolve()


def test_the_same_file_by_another_path_is_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path / "state"))
    first = _cluster_file(tmp_path / "a")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    directory = cluster_dir("cluster", first)
    assert other_source(directory, tmp_path / "link" / "cluster.yaml") is None


def test_a_record_of_a_file_gone_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path / "state"))
    first, second = _cluster_file(tmp_path / "a"), _cluster_file(tmp_path / "b")
    directory = cluster_dir("cluster", first)
    first.unlink()  # moved away: its state dir is free
    assert other_source(directory, second) is None
    cluster_dir("cluster", second)
    assert recorded_source(directory) == second.resolve()


def test_a_dir_from_before_the_record_is_taken_by_the_next_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path / "state"))
    cluster_path("cluster").mkdir(parents=True)
    first = _cluster_file(tmp_path / "a")
    assert other_source(cluster_path("cluster"), first) is None
    assert recorded_source(cluster_dir("cluster", first)) == first.resolve()


def test_a_second_cluster_yaml_is_refused_with_one_line(tmp_path):
    first, second = _cluster_file(tmp_path / "a"), _cluster_file(tmp_path / "b")
    proc = _run(tmp_path, "up", "-f", str(first))
    assert proc.returncode == 1, proc.stderr  # got as far as the host (nothing listens): the dir is first's
    assert recorded_source(tmp_path / "state" / "clusters" / "cluster") == first.resolve()
    for command in ("up", "plan", "status", "validate"):
        proc = _run(tmp_path, command, "-f", str(second))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip() == (
            f"error: {second}: the state dir of cluster cluster belongs to {first.resolve()}; give this file its own `name:`"
        ), proc.stderr
    # The first file goes on as before; the second with a name of its own gets its own dir.
    assert _run(tmp_path, "up", "-f", str(first)).returncode == 1
    second.write_text("name: other\n" + BODY)
    assert _run(tmp_path, "up", "-f", str(second)).returncode == 1
    assert recorded_source(tmp_path / "state" / "clusters" / "other") == second.resolve()


def test_files_that_name_the_cluster_share_its_dir_on_purpose(tmp_path):
    """The lab's variants (tests/e2e) say `name: lab-...`: the same cluster, other desired states."""
    first, variant = _cluster_file(tmp_path / "a", "lab-x"), _cluster_file(tmp_path / "b", "lab-x")
    assert _run(tmp_path, "up", "-f", str(first)).returncode == 1
    assert _run(tmp_path, "up", "-f", str(variant)).returncode == 1
    assert recorded_source(tmp_path / "state" / "clusters" / "lab-x") == first.resolve()
