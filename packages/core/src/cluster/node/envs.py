"""A node's runtime envs: packages fetched and unpacked, virtualenvs made, once per node.

Everything lives under the node's ``runtime_resources`` dir (in its session dir):

- ``working_dir/<package>/``: a working dir, unpacked (the worker's cwd, first on sys.path);
- ``py_modules/<package>/<name>/`` (a module directory) or ``py_modules/<file>/<name>`` (a
  .whl/.zip file): what goes on sys.path;
- ``pip/<key>/`` or ``uv/<key>/``: a virtualenv named by the hash of its requirements
  (:func:`cluster.runtime_env.venv_key`), with ``<key>.log`` beside it: what its installer
  printed, one ``cluster: creating`` line per attempt.

Each is made once however many workers need it at once (single flight: the first asker makes
it, the others wait for its outcome); a failed one is tried again by the next asker. A worker
is forked by the zygote as any other, then enters its env (:func:`enter`): env vars, cwd,
sys.path, the virtualenv's site-packages first (docs/design/0015-runtime-envs.md says why).

Imports: wire (KV messages), leaves.
"""

from __future__ import annotations

import importlib
import os
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio

from cluster import packaging
from cluster import runtime_env as renv
from cluster.errors import RuntimeEnvSetupError

log = structlog.get_logger("cluster.node.envs")

KV_PREFIX = "runtime_env/"  # (cluster.owner.envs uploads there)
LOG_TAIL_LINES = 25

Fetch = Callable[[str], Awaitable[bytes | None]]  # a KV value from the head
Announce = Callable[[str], None]  # a progress line for the owners waiting on this env


@attrs.define(eq=False)
class _Flight:
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.define(eq=False)
class NodeEnvs:
    """The runtime envs of one node."""

    root: str
    node_id: str
    fetch: Fetch
    _flights: dict[str, _Flight] = attrs.Factory(dict)
    installs: int = 0  # virtualenvs this node made (for tests and `cluster status` alike)

    async def prepare(self, env: dict[str, Any], announce: Announce) -> dict[str, Any]:
        """What a worker of ``env`` (resolved) needs to enter it (see :func:`enter`), making
        what is missing. Raises RuntimeEnvSetupError saying why it could not."""
        timeout = renv.setup_timeout_s(env)
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            return await self._prepare(env, announce)
        assert scope.cancelled_caught
        raise RuntimeEnvSetupError(
            f"setting up the runtime env on node {self.node_id} took longer than its setup timeout "
            f"({timeout:g} s; runtime_env={{'config': {{'setup_timeout_seconds': N}}}} sets it){self._log_hint(env)}")

    async def _prepare(self, env: dict[str, Any], announce: Announce) -> dict[str, Any]:
        sys_path: list[str] = []
        cwd = None
        if env.get("working_dir"):
            cwd = await self._once("wd:" + env["working_dir"], self._unpack, env["working_dir"], "working_dir", None)
            sys_path.append(cwd)
        for module in env.get("py_modules") or []:
            if "package" in module:
                sys_path.append(await self._once("pm:" + module["package"], self._unpack, module["package"],
                                                 "py_modules", module["name"]))
            else:
                sys_path.append(await self._once("pf:" + module["file"], self._file, module["file"], module["name"]))
        venv = None
        key = renv.venv_key(env)
        if key is not None:
            venv = await self._once("venv:" + key, self._venv, env, key, announce)
            sys_path.append(_site_packages(venv))
        return {"spec": env, "env_vars": dict(env.get("env_vars") or {}), "cwd": cwd, "sys_path": sys_path,
                "venv": venv}

    async def _once(self, key: str, make: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``make(*args)``'s result, made by one asker at a time: the others wait for it; a
        success is kept, a failure is told to those waiting and forgotten."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            try:
                flight.result = await make(*args)
            except BaseException as exc:
                flight.error = exc
                del self._flights[key]
                raise
            finally:
                flight.done.set()
            return flight.result
        await flight.done.wait()
        if flight.error is not None:
            if isinstance(flight.error, RuntimeEnvSetupError):
                raise RuntimeEnvSetupError(str(flight.error))
            raise RuntimeEnvSetupError(f"setting up the runtime env on node {self.node_id} failed: {flight.error!r}")
        return flight.result

    async def _download(self, name: str) -> bytes:
        data = await self.fetch(KV_PREFIX + name)
        if data is None:
            raise RuntimeEnvSetupError(f"the head has no runtime env package {name} (was the cluster's head "
                                       "restarted without its metadata store? submit the task again)")
        return data

    async def _unpack(self, name: str, field: str, module: str | None) -> str:
        """A package unpacked under ``field/``; the path to put on sys.path (or use as cwd)."""
        folder = os.path.join(self.root, field, name.removesuffix(".zip"))
        destination = os.path.join(folder, module) if module else folder
        if os.path.isdir(destination):
            return folder
        data = await self._download(name)
        os.makedirs(folder if module else os.path.dirname(folder), exist_ok=True)
        zip_path = folder + ".zip.part"
        with open(zip_path, "wb") as f:
            f.write(data)
        try:
            await trio.to_thread.run_sync(packaging.extract_package, zip_path, destination)
        except (OSError, ValueError) as exc:
            raise RuntimeEnvSetupError(f"could not unpack the {field} package {name} on node {self.node_id}: {exc}") from None
        finally:
            os.unlink(zip_path)
        return folder

    async def _file(self, name: str, filename: str) -> str:
        path = os.path.join(self.root, "py_modules", name, filename)
        if not os.path.isfile(path):
            data = await self._download(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".part", "wb") as f:
                f.write(data)
            os.rename(path + ".part", path)
        return path

    # ------------------------------------------------------------------ virtualenvs

    def _venv_paths(self, env: dict[str, Any]) -> tuple[str, str, str]:
        key = renv.venv_key(env)
        assert key is not None
        installer = "pip" if "pip" in env else "uv"
        folder = os.path.join(self.root, installer, key)
        return installer, folder, folder + ".log"

    def _log_hint(self, env: dict[str, Any]) -> str:
        if renv.venv_key(env) is None:
            return ""
        _, _, log_path = self._venv_paths(env)
        return f"\n{_tail(log_path)}\n(the installer's log: {log_path})" if os.path.exists(log_path) else ""

    async def _venv(self, env: dict[str, Any], key: str, announce: Announce) -> str:
        installer, folder, log_path = self._venv_paths(env)
        ready = os.path.join(folder, ".cluster-ready")
        if os.path.exists(ready):
            return folder
        spec = env[installer]
        uv = None
        if installer == "uv":
            uv = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
            if uv is None:
                raise RuntimeEnvSetupError(
                    f"runtime_env['uv'] needs uv, which node {self.node_id} does not have (not on PATH nor "
                    f"beside {sys.executable}): install it where the cluster runs (pip install uv), or use "
                    "runtime_env['pip']")
        started = time.monotonic()
        announce(f"creating runtime env {installer}={spec['packages']} on node {self.node_id} (log: {log_path})")
        log.info("runtime_env_creating", installer=installer, packages=spec["packages"], key=key, log=log_path)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
        with open(log_path, "a") as out:
            out.write(f"cluster: creating {installer} env {key} for {spec['packages']} at {time.ctime()}\n")
        python = os.path.join(folder, "bin", "python")
        requirements = os.path.join(os.path.dirname(folder), key + ".requirements.txt")
        with open(requirements, "w") as f:
            f.write("\n".join(spec["packages"]) + "\n")
        pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check", "--no-input"]
        steps: list[tuple[str, list[str]]] = [("venv", [sys.executable, "-m", "venv", "--without-pip", folder])]
        if installer == "pip":
            if spec.get("pip_version"):
                steps.append(("pip install pip", [*pip, "install", "pip" + spec["pip_version"]]))
                pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
            steps.append(("pip install", [*pip, "install", *spec.get("pip_install_options", []), "-r", requirements]))
            if spec.get("pip_check"):
                steps.append(("pip check", [*pip, "check"]))
        else:
            assert uv is not None
            if spec.get("uv_version"):
                steps.append(("uv version", [uv, "self", "version"]))  # (logged: what made the env)
            steps.append(("uv pip install", [uv, "pip", "install", "--python", python,
                                             *spec.get("uv_pip_install_options", []), "-r", requirements]))
            if spec.get("uv_check"):
                steps.append(("uv pip check", [uv, "pip", "check", "--python", python]))
        for what, command in steps:
            with open(log_path, "a") as out:
                out.write(f"cluster: $ {' '.join(command)}\n")
                out.flush()
                code = (await trio.run_process(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                               check=False)).returncode
            if code != 0:
                raise RuntimeEnvSetupError(
                    f"could not set up the runtime env on node {self.node_id}: {what} exited with code {code}:\n"
                    f"{_tail(log_path)}\n(the installer's whole log: {log_path})")
            if what == "venv":
                # The new env sees what the cluster runs on (as --system-site-packages would, but
                # for the cluster's own environment): the installer keeps what is already there.
                with open(os.path.join(_site_packages(folder), "_cluster_base.pth"), "w") as f:
                    f.write("\n".join(p for p in sys.path if p.endswith("-packages")) + "\n")
        with open(ready, "w") as f:
            f.write(str(time.time()))
        self.installs += 1
        seconds = round(time.monotonic() - started, 2)
        with open(log_path, "a") as out:
            out.write(f"cluster: env {key} ready in {seconds} s\n")
        announce(f"runtime env {installer}={spec['packages']} ready on node {self.node_id} in {seconds} s")
        log.info("runtime_env_created", key=key, seconds=seconds)
        return folder


def _site_packages(venv: str) -> str:
    return os.path.join(venv, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def enter(setup: dict[str, Any]) -> None:
    """Make this (freshly forked) worker run in the env ``setup`` describes (from
    :meth:`NodeEnvs.prepare`): its env vars, its working dir as cwd, its paths first on sys.path."""
    os.environ.update(setup["env_vars"])
    paths = list(setup["sys_path"])
    venv = setup.get("venv")
    if venv:
        os.environ["VIRTUAL_ENV"] = venv
        os.environ["PATH"] = os.pathsep.join([os.path.join(venv, "bin"), os.environ.get("PATH", os.defpath)])
        before = list(sys.path)
        site.addsitedir(paths[-1])  # (runs its .pth files, as the venv's own python would)
        paths[-1:] = [p for p in sys.path if p not in before]
    sys.path[:] = paths + [p for p in sys.path if p not in paths]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*[p for p in setup["sys_path"] if p], *filter(None, [os.environ.get("PYTHONPATH")])])
    if setup.get("cwd"):
        os.chdir(setup["cwd"])
    importlib.invalidate_caches()
