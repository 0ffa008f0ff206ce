"""Runtime envs (Ray's ``runtime_env=``) on real clusters: env vars, working dirs, py_modules,
pip/uv virtualenvs made once per node, their failures, and workers kept apart by env."""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import zipfile
from pathlib import Path

import psutil
import pytest

import cluster
from cluster.exceptions import ConfigError, RuntimeEnvSetupError


def build_wheel(root: Path, name: str, version: str, source: str) -> Path:
    """A pure-Python wheel of one module ``name`` (``name/__init__.py`` holding ``source``),
    written as a zip by hand: no build backend, no index."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = root / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def install_logs(lc) -> list[Path]:
    return sorted(Path(lc.root).rglob("runtime_resources/*/*.log"))


def creations(lc) -> int:
    """Virtualenvs made on the cluster's nodes, by the installer logs' own lines."""
    return sum(log.read_text().count("cluster: creating ") for log in install_logs(lc))


@cluster.remote
def read_env(*names: str) -> dict:
    return {name: os.environ.get(name) for name in names}


@cluster.remote
class EnvActor:
    def read(self, name: str) -> str | None:
        return os.environ.get(name)


def test_env_vars_reach_tasks_and_actors_and_init_sets_the_jobs_default(make_cluster):
    lc = make_cluster(num_cpus=2)
    cluster.init(lc.address, token=lc.token, runtime_env={"env_vars": {"JOB": "job", "BOTH": "job"}})
    assert cluster.get(read_env.remote("JOB", "BOTH"), timeout=60) == {"JOB": "job", "BOTH": "job"}
    # A task's env vars merge with the job's, the task's winning (Ray's rule).
    mine = read_env.options(runtime_env={"env_vars": {"BOTH": "task", "OWN": "1"}})
    assert cluster.get(mine.remote("JOB", "BOTH", "OWN"), timeout=60) == {"JOB": "job", "BOTH": "task", "OWN": "1"}
    actor = EnvActor.options(runtime_env={"env_vars": {"ACTOR": "yes"}}).remote()
    assert cluster.get([actor.read.remote("ACTOR"), actor.read.remote("JOB")], timeout=60) == ["yes", "job"]

    @cluster.remote(runtime_env={"env_vars": {"PARENT": "p"}})
    def parent() -> dict:
        # A nested task inherits its parent's env (and may add to it).
        plain = cluster.get(read_env.remote("PARENT", "JOB"))
        added = cluster.get(read_env.options(runtime_env={"env_vars": {"CHILD": "c"}}).remote("PARENT", "CHILD"))
        return {"plain": plain, "added": added}

    assert cluster.get(parent.remote(), timeout=60) == {
        "plain": {"PARENT": "p", "JOB": "job"}, "added": {"PARENT": "p", "CHILD": "c"}}


def test_working_dir_is_the_cwd_and_importable_and_py_modules_import(make_cluster, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "helper_in_wd.py").write_text("VALUE = 'from the working dir'\n")
    (work / "data.txt").write_text("payload")
    (work / "skipped.log").write_text("left out")
    modules = tmp_path / "modules" / "shipped_module"
    modules.mkdir(parents=True)
    (modules / "__init__.py").write_text("NAME = 'shipped'\n")
    wheel = build_wheel(tmp_path, "wheel_module", "0.1", "NAME = 'from a wheel'\n")
    lc = make_cluster(num_cpus=1)
    cluster.init(lc.address, token=lc.token)

    @cluster.remote
    def look() -> dict:
        import helper_in_wd  # (only there in the working dir)

        return {"cwd_files": sorted(os.listdir(".")), "data": open("data.txt").read(),
                "value": helper_in_wd.VALUE, "first_on_path": sys.path[0] == os.getcwd()}

    env = {"working_dir": str(work), "excludes": ["*.log"]}
    got = cluster.get(look.options(runtime_env=env).remote(), timeout=60)
    assert got == {"cwd_files": ["data.txt", "helper_in_wd.py"], "data": "payload",
                   "value": "from the working dir", "first_on_path": True}

    @cluster.remote
    def modules_seen() -> list:
        import shipped_module
        import wheel_module

        return [shipped_module.NAME, wheel_module.NAME]

    env = {"py_modules": [str(modules), str(wheel)]}
    assert cluster.get(modules_seen.options(runtime_env=env).remote(), timeout=60) == ["shipped", "from a wheel"]
    with pytest.raises(ModuleNotFoundError):  # (a task without the env has neither)
        cluster.get(modules_seen.remote(), timeout=60)


def test_a_pip_env_with_a_local_wheel_is_made_once_for_two_tasks_at_once(make_cluster, tmp_path):
    wheel = build_wheel(tmp_path, "tiny_pkg", "1.0", "def hello():\n    return 'hello from tiny_pkg'\n")
    lc = make_cluster(num_cpus=2)
    cluster.init(lc.address, token=lc.token)

    @cluster.remote(runtime_env={"pip": [str(wheel)]})
    def use_it(i: int) -> tuple:
        import tiny_pkg

        return i, tiny_pkg.hello(), os.environ.get("VIRTUAL_ENV", "")

    results = cluster.get([use_it.remote(0), use_it.remote(1)], timeout=240)
    assert [r[:2] for r in results] == [(0, "hello from tiny_pkg"), (1, "hello from tiny_pkg")]
    assert results[0][2] and "runtime_resources/pip/" in results[0][2]
    assert creations(lc) == 1, [log.read_text() for log in install_logs(lc)]
    # Ray's dict form of the same requirements is the same env: no second install.
    same = use_it.options(runtime_env={"pip": {"packages": [str(wheel)], "pip_check": False}})
    assert cluster.get(same.remote(2), timeout=120)[1] == "hello from tiny_pkg"
    assert creations(lc) == 1
    with pytest.raises(ModuleNotFoundError):
        cluster.get(cluster.remote(lambda: __import__("tiny_pkg")).remote(), timeout=60)


def test_a_uv_env_installs_a_local_wheel(make_cluster, tmp_path):
    wheel = build_wheel(tmp_path, "uv_tiny", "1.0", "NAME = 'uv_tiny'\n")
    lc = make_cluster(num_cpus=1)
    cluster.init(lc.address, token=lc.token)

    @cluster.remote(runtime_env={"uv": [str(wheel)]})
    def use_it() -> str:
        import uv_tiny

        return uv_tiny.NAME

    assert cluster.get(use_it.remote(), timeout=240) == "uv_tiny"
    assert [log.parent.name for log in install_logs(lc)] == ["uv"]


def test_a_bad_requirement_fails_with_runtime_env_setup_error_and_others_run_on(make_cluster, tmp_path, capfd):
    lc = make_cluster(num_cpus=1)
    cluster.init(lc.address, token=lc.token)
    missing = tmp_path / "no_such_pkg-1.0-py3-none-any.whl"

    @cluster.remote
    def ok() -> str:
        return "fine"

    bad = ok.options(runtime_env={"pip": [str(missing)]})
    refs = [bad.remote(), bad.remote()]
    for ref in refs:
        with pytest.raises(RuntimeEnvSetupError) as info:
            cluster.get(ref, timeout=240)
        message = str(info.value)
        assert "pip install exited with code" in message
        assert "does not exist" in message  # pip's own words
        log_path = message.rsplit("(the installer's whole log: ", 1)[1].rstrip(")")
        assert Path(log_path).is_file() and "does not exist" in Path(log_path).read_text()
    assert isinstance(info.value, cluster.exceptions.ClusterError)
    assert cluster.get(ok.remote(), timeout=60) == "fine"  # the plain pool is unaffected
    actor = EnvActor.options(runtime_env={"pip": [str(missing)]}).remote()
    with pytest.raises(RuntimeEnvSetupError, match="does not exist"):
        cluster.get(actor.read.remote("X"), timeout=240)
    # Progress went to the driver's output, as workers' output does.
    assert "creating runtime env pip=" in capfd.readouterr().err


def test_tasks_without_an_env_never_run_on_an_envs_worker_and_vice_versa(make_cluster, e2e):
    lc = make_cluster(num_cpus=2, env={"CLUSTER_ENV_WORKER_IDLE_S": "0.5"})
    cluster.init(lc.address, token=lc.token)

    @cluster.remote
    def where() -> tuple:
        return os.getpid(), os.environ.get("IN_ENV")

    in_env = where.options(runtime_env={"env_vars": {"IN_ENV": "1"}})
    refs = []
    for _ in range(20):
        refs += [where.remote(), in_env.remote()]
    results = cluster.get(refs, timeout=120)
    plain = {pid for pid, flag in results[0::2]}
    env = {pid for pid, flag in results[1::2]}
    assert {flag for _, flag in results[0::2]} == {None} and {flag for _, flag in results[1::2]} == {"1"}
    assert plain and env and not plain & env
    # An env's idle workers are reaped (the plain pool stays).
    e2e.wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in env), timeout=60, what="the env's workers to be reaped")
    assert any(psutil.pid_exists(pid) for pid in plain)


def test_runtime_env_fields_are_checked(tmp_path):
    @cluster.remote
    def f() -> None:
        pass

    for bad, said in [
        ({"conda": "myenv"}, r"\['conda'\] are not supported here; supported fields"),
        ({"image_uri": "x"}, r"\['image_uri'\] are not supported"),
        ({"pipp": ["x"]}, r"unknown runtime_env field\(s\) \['pipp'\]; known fields: \['config'"),
        ({"env_vars": {"A": 1}}, "must map strings to strings"),
        ({"working_dir": str(tmp_path / "nope")}, "is not a directory"),
        ({"working_dir": "s3://bucket/dir.zip"}, "remote URIs are not supported"),
        ({"py_modules": [str(tmp_path)+"/x.txt"]}, "neither a directory nor a .whl/.zip"),
        ({"pip": ["a"], "uv": ["b"]}, "'pip' or 'uv', not both"),
        ({"pip": {"packages": ["a"], "bogus": 1}}, r"unknown runtime_env\['pip'\] key\(s\) \['bogus'\]"),
        ({"pip": str(tmp_path / "requirements.txt")}, "could not read the requirements file"),
        ({"config": {"setup_timeout_seconds": 0}}, "must be a positive integer"),
        ({"config": {"eager": True}}, r"unknown runtime_env\['config'\] key"),
    ]:
        with pytest.raises(ConfigError, match=said):
            f.options(runtime_env=bad)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\nrequests==2.31\n\nattrs\n")
    opts = f.options(runtime_env={"pip": str(requirements)})._options
    assert opts.runtime_env == {"pip": {"packages": ["requests==2.31", "attrs"], "pip_check": False}}


def test_an_install_that_outlasts_setup_timeout_seconds_fails_saying_so(make_cluster):
    import socket

    lc = make_cluster(num_cpus=1)
    cluster.init(lc.address, token=lc.token)
    with socket.socket() as silent:  # a package index that takes connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"

        @cluster.remote
        def ok() -> str:
            return "fine"

        stuck = ok.options(runtime_env={"pip": {"packages": [f"--index-url {index}", "some-package"]},
                                        "config": {"setup_timeout_seconds": 3}})
        with pytest.raises(RuntimeEnvSetupError, match=r"took longer than its setup timeout \(3 s"):
            cluster.get(stuck.remote(), timeout=120)
    assert cluster.get(ok.remote(), timeout=60) == "fine"
