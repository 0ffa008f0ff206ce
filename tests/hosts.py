"""Separate hosts on one Linux machine, for tests: a network namespace each, on a private bridge.

    net = Network.create(["h1", "h2", "h3"], root=tmp)   # (tests take the make_hosts fixture)
    head = net["h1"].start_head()                       # `cluster start --head --host 10.x.y.11`
    net["h2"].join(head)                                # `cluster start --address ... --host 10.x.y.12`
    out = net["h3"].python(SCRIPT, env=head.env())      # a driver on a third machine
    net.cut(net["h2"]); ...; net.heal(net["h2"])        # a partition where no socket closes
    net.close()                                         # every process, namespace and file: gone

What makes a host a host, as far as is cheap:

- its own network namespace, with ``eth0`` (its IP on the run's subnet) and ``lo``, plugged into
  a bridge that lives in a namespace of its own (the "switch"); the root namespace has no leg
  on that network, so nothing of a test can leak onto the machine's real one, and abstract
  Unix sockets (which live in the network namespace) do not cross hosts;
- its own hostname (UTS namespace), its own ``/dev/shm`` (a tmpfs in its own mount namespace,
  so no two hosts share an object store), its own ``/etc/hosts`` (its name on 127.0.1.1, as
  Debian has it, and the other hosts' names on their addresses) and an ``/etc/resolv.conf``
  with no name server (no host asks the real DNS);
- its own ``CLUSTER_TMPDIR`` (session dirs, tokens, daemon records).

Every process of a host enters the namespaces of the host's *anchor*, a small process started
in them when the host is made (``nsenter --target ANCHOR``), so all of a host's processes share
one /dev/shm and one hostname. Pids are the machine's (there is no PID namespace): a test can
SIGKILL, SIGSTOP and SIGCONT any process it finds, from outside.

``cut(host)`` sets the host's port on the bridge down: the host keeps its address and its
sockets, and what it sends goes nowhere, nor does what is sent to it, until ``heal(host)``.

Never connect from the test process (the root namespace) to a host's address: the root
namespace has a default route, and such a packet would leave the machine. Talk to the hosts
by running commands on them and reading what they print.

Names are unique per run (``clh-<pid of the test process>-<n>-...``) and so are subnets, so
runs side by side never meet. ``close()`` kills every process found in each host's network
namespace (by pid), deletes the namespaces (a host's mounts go with its last process) and
removes the files; a run killed before it could clean up is cleaned up by the next one
(``reap_stale``: namespaces whose test process is gone).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cluster.session import pid_alive

PREFIX = "clh"
TOOLS = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount"}
KILL_TIMEOUT_S = 30.0  # a bound, not an expectation: a SIGKILLed process is gone in milliseconds
_runs = itertools.count(1)
_STALE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-")

# Runs in a host's fresh namespaces (as root), stays there holding them, and ends when the test
# process closes its stdin or dies.
_ANCHOR = r"""
import os, socket, subprocess, sys
name, etc, shm_size = sys.argv[1:4]
socket.sethostname(name)
options = "mode=1777" + (",size=" + shm_size if shm_size else "")
mounts = [["-t", "tmpfs", "-o", options, "cluster-host-shm", "/dev/shm"],
          ["--bind", os.path.join(etc, "hosts"), "/etc/hosts"],
          ["--bind", os.path.join(etc, "resolv.conf"), "/etc/resolv.conf"]]
for args in mounts:
    if os.path.exists(args[-1]):  # (a machine without /etc/resolv.conf has nothing to hide)
        subprocess.run(["mount", *args], check=True)
print("ready", flush=True)
while sys.stdin.buffer.read(4096):
    pass
"""


# ---------------------------------------------------------------------------- availability


@functools.cache
def unavailable() -> str | None:
    """Why hosts cannot be made on this machine, or None if they can (checked once)."""
    if not sys.platform.startswith("linux"):
        return "separate hosts need Linux network namespaces"
    if os.geteuid() != 0:
        return "separate hosts need root (ip netns add, unshare --mount); CI runs the tests as root"
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"separate hosts need {', '.join(missing)}: apt-get install iproute2 util-linux"
    probe = f"{PREFIX}-{os.getpid()}-0-probe"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"ip netns add is not permitted here: {added.stderr.strip()}"
    try:
        inner = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "--mount",
                                "--propagation", "private", "true"], capture_output=True, text=True, timeout=30)
        if inner.returncode != 0:
            return f"unshare --uts --mount is not permitted here: {inner.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


# --------------------------------------------------------------------------- processes


@attrs.define
class HostProcess:
    """A process started on a host in the background (its own process group)."""

    host: Host
    popen: subprocess.Popen
    log: Path | None
    _unread: bytes = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        self.signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.signal(signal.SIGCONT)

    def signal_group(self, signum: int) -> None:
        """Signal the process and everything it started that stayed in its group."""
        os.killpg(self.pid, signum)

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        """What it printed so far (stdout and stderr), if it printed to its log."""
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""

    # With pipes=True: talk to it line by line.

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None, "spawned without pipes=True"
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def readline(self, timeout: float = 60) -> str:
        """The next line it printed (without the newline); fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._unread:
            if not self._read_some(deadline - time.monotonic()):
                raise AssertionError(f"on {self.host.name}: pid {self.pid} printed no line within {timeout:.0f}s "
                                     f"(exit code {self.poll()}); so far: {self._unread!r}")
        line, _, self._unread = self._unread.partition(b"\n")
        return line.decode(errors="replace")

    def has_output(self) -> bool:
        """True if it printed something not read yet (looks without waiting)."""
        return bool(self._unread) or self._read_some(0)

    def _read_some(self, timeout: float) -> bool:
        assert self.popen.stdout is not None, "spawned without pipes=True"
        fd = self.popen.stdout.fileno()
        if not select.select([fd], [], [], max(timeout, 0))[0]:
            return False
        chunk = os.read(fd, 65536)
        self._unread += chunk
        return bool(chunk)


@attrs.frozen
class Head:
    """A head started on a host: what drivers and nodes need to reach it."""

    host: Host
    address: str
    token: str
    pid: int
    dashboard_url: str

    def env(self) -> dict[str, str]:
        """The environment of a driver that connects to this head (``cluster.init()``)."""
        return {"CLUSTER_ADDRESS": self.address, "CLUSTER_TOKEN": self.token}


@attrs.define(eq=False)
class Host:
    """One machine of a Network: ``ip``, ``name`` (its hostname), and ways to run things on it."""

    name: str
    ip: str
    netns: str
    port: str  # its port on the bridge, in the switch namespace
    root: Path  # this host's files, seen from the test process
    _network: Network
    _anchor: subprocess.Popen | None = None
    _ns_id: tuple[int, int] | None = None  # (st_dev, st_ino) of its network namespace
    _spawned: list[HostProcess] = attrs.Factory(list)
    is_cut: bool = False

    @property
    def tmpdir(self) -> Path:
        """Its ``CLUSTER_TMPDIR``."""
        return self.root / "tmp"

    @property
    def env(self) -> dict[str, str]:
        """The environment every process of this host starts from (none of the test's CLUSTER_*)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
        env["CLUSTER_TMPDIR"] = str(self.tmpdir)
        env["HOSTNAME"] = self.name
        return env

    def command(self, argv: Sequence[str], *, cwd: str | os.PathLike | None = None) -> list[str]:
        """``argv`` as a command line that runs it on this host."""
        assert self._anchor is not None and self._anchor.poll() is None, f"host {self.name} is not up"
        # Entering a mount namespace moves to its root directory: come back to where we were.
        wd = os.fspath(cwd) if cwd is not None else os.getcwd()
        return ["nsenter", f"--target={self._anchor.pid}", "--net", "--uts", "--mount", f"--wd={wd}", "--", *argv]

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, input: str | None = None,
            cwd: str | os.PathLike | None = None, timeout: float = 120, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` here and wait; stdout and stderr are captured (text). ``check``: a non-zero
        exit fails the test, with what it printed."""
        proc = subprocess.run(self.command(argv, cwd=cwd), env={**self.env, **(env or {})}, input=input,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"on {self.name}: {' '.join(argv)[:200]} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def python(self, code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``python -c CODE ARGS`` here (the test's interpreter), like ``run``."""
        return self.run([sys.executable, "-c", code, *args], **kwargs)

    def cluster(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``cluster ARGS`` here, like ``run``."""
        return self.run([sys.executable, "-m", "cluster", *args], **kwargs)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None, pipes: bool = False) -> HostProcess:
        """Start ``argv`` here in the background, in a process group of its own. Its output goes to
        a log file (``.output()``), or with ``pipes`` to pipes a test talks through (``send``,
        ``readline``)."""
        log = None
        if pipes:
            streams: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                                       "stderr": subprocess.STDOUT, "bufsize": 0}
        else:
            log = self.root / "logs" / f"spawned-{len(self._spawned)}.out"
            streams = {"stdin": subprocess.DEVNULL, "stdout": log.open("ab"), "stderr": subprocess.STDOUT}
        try:
            popen = subprocess.Popen(self.command(argv, cwd=cwd), env={**self.env, **(env or {})},
                                     start_new_session=True, **streams)
        finally:
            if log is not None:
                streams["stdout"].close()
        process = HostProcess(self, popen, log)
        self._spawned.append(process)
        return process

    # ------------------------------------------------------------------- cluster daemons

    def start_head(self, *args: str) -> Head:
        """``cluster start --head ARGS`` here: on this host's IP and any free port unless ARGS
        say otherwise."""
        defaults = _unless_given(args, {"--host": self.ip, "--port": "0", "--dashboard-port": "0"})
        self.cluster("start", "--head", *defaults, *args)
        current = json.loads((self.tmpdir / "current.json").read_text())
        token = Path(current["token_file"]).read_text().strip()
        return Head(self, current["address"], token, current["pid"], current.get("dashboard_url") or "")

    def join(self, head: Head, *args: str) -> dict[str, Any]:
        """``cluster start --address HEAD ARGS`` here (on this host's IP unless ARGS say
        otherwise); returns the node's daemon record (address, node_id, pid, ...)."""
        before = {r["pid"] for r in self.daemons()}
        self.cluster("start", "--address", head.address, "--token", head.token,
                     *_unless_given(args, {"--host": self.ip}), *args)
        return next(r for r in self.daemons() if r["pid"] not in before)

    def daemons(self) -> list[dict[str, Any]]:
        """The records of the daemons ``cluster start`` left running here (pid, role, address...)."""
        folder = self.tmpdir / "daemons"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    # ---------------------------------------------------------------------- its processes

    def pids(self) -> list[int]:
        """Every live process of this host (all that share its network namespace)."""
        return _processes_in(self._ns_id) if self._ns_id is not None else []

    def logs(self, lines: int = 15) -> str:
        """The end of every log this host's processes wrote."""
        out = []
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path.suffix in (".out", ".err", ".jsonl") and path.stat().st_size:
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {self.name}: {path.relative_to(self.root)}\n" + "\n".join(text))
        return "\n".join(out)


def _unless_given(args: Iterable[str], defaults: dict[str, str]) -> list[str]:
    given = {arg.split("=", 1)[0] for arg in args}
    return [item for option, value in defaults.items() if option not in given for item in (option, value)]


# ----------------------------------------------------------------------------- network


@attrs.define(eq=False)
class Network:
    """Hosts on one private bridge. Index it by position or by host name; iterate its hosts."""

    prefix: str
    subnet: str  # e.g. "10.142.3.0/24"
    root: Path
    hosts: list[Host] = attrs.Factory(list)
    _closed: bool = False

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @classmethod
    def create(cls, names: Sequence[str], *, root: Path, shm_size: str | None = None) -> Network:
        """Make the hosts ``names`` (hostnames; at most 200) on a new bridge, files under ``root``.
        ``shm_size`` bounds each host's /dev/shm (tmpfs ``size=``, e.g. "2G"; default half the RAM)."""
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        if len(set(names)) != len(names) or not 0 < len(names) <= 200:
            raise ValueError(f"host names must be 1-200 distinct names, got {names!r}")
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name) or name == "sw":
                raise ValueError(f"{name!r} is not a usable host name (lower case, digits, '-'; not 'sw')")
        reap_stale()
        run = next(_runs)
        pid = os.getpid()
        # Each run's network is private to its namespaces, so subnets could repeat; they differ
        # anyway so that logs and captures of runs side by side tell them apart.
        subnet = f"10.{100 + pid % 100}.{run % 256}"
        net = cls(f"{PREFIX}-{pid}-{run}", f"{subnet}.0/24", Path(root))
        try:
            net._build(names, subnet, shm_size)
        except BaseException:
            net.close()
            raise
        return net

    def _build(self, names: Sequence[str], subnet: str, shm_size: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, name in enumerate(names, start=1):
            host = Host(name, f"{subnet}.{10 + i}", f"{self.prefix}-{name}", f"p{i}", self.root / name, self)
            self.hosts.append(host)
            for folder in ("tmp", "logs", "etc"):
                (host.root / folder).mkdir(parents=True, exist_ok=True)
            _ip("netns", "add", host.netns)
            host._ns_id = _ns_id(f"/run/netns/{host.netns}")
            _ip("-n", host.netns, "link", "add", "eth0", "type", "veth", "peer", "name", host.port,
                "netns", self.switch)
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
        for host in self.hosts:
            # As Debian writes it for a machine without a static address (its own name is a
            # loopback address, which a daemon must not advertise), plus its neighbours' names.
            known = [("127.0.0.1", "localhost"), ("127.0.1.1", host.name), ("::1", "localhost")]
            known += [(other.ip, other.name) for other in self.hosts if other is not host]
            (host.root / "etc" / "hosts").write_text("".join(f"{ip}\t{name}\n" for ip, name in known))
            (host.root / "etc" / "resolv.conf").write_text("# no name server: names are in /etc/hosts\n")
            with (host.root / "logs" / "anchor.err").open("ab") as err:
                host._anchor = subprocess.Popen(
                    ["ip", "netns", "exec", host.netns, "unshare", "--uts", "--mount", "--propagation", "private",
                     "--", sys.executable, "-c", _ANCHOR, host.name, str(host.root / "etc"), shm_size or ""],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        for host in self.hosts:
            assert host._anchor is not None and host._anchor.stdout is not None
            if host._anchor.stdout.readline() != b"ready\n":
                host._anchor.wait(10)
                raise RuntimeError(f"host {host.name} did not come up:\n" + host.logs())

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, key: int | str) -> Host:
        if isinstance(key, int):
            return self.hosts[key]
        for host in self.hosts:
            if host.name == key:
                return host
        raise KeyError(f"no host named {key!r} (there are {[h.name for h in self.hosts]})")

    # ------------------------------------------------------------------------ faults

    def cut(self, host: Host) -> None:
        """Partition ``host``: its bridge port goes down; no socket closes, no packet passes."""
        _ip("-n", self.switch, "link", "set", host.port, "down")
        host.is_cut = True

    def heal(self, host: Host) -> None:
        """Undo ``cut(host)``: the port comes back up, and what TCP kept retrying gets through."""
        _ip("-n", self.switch, "link", "set", host.port, "up")
        host.is_cut = False

    # ----------------------------------------------------------------------- the end

    def logs(self, lines: int = 15) -> str:
        return "\n".join(text for text in (h.logs(lines) for h in self.hosts) if text)

    def close(self) -> list[str]:
        """Kill every process of every host, delete the namespaces, remove the files. Returns
        what could not be cleaned up (empty when all went)."""
        if self._closed:
            return []
        self._closed = True
        problems = []
        for host in self.hosts:
            if host._anchor is not None:
                for pipe in (host._anchor.stdin, host._anchor.stdout):
                    if pipe is not None:
                        pipe.close()  # the anchor ends; what else runs there is killed next
        for host in self.hosts:
            for process in host._spawned:
                for pipe in (process.popen.stdin, process.popen.stdout):
                    if pipe is not None:
                        pipe.close()
        for host in self.hosts:
            survivors = _kill_namespace(host._ns_id, [host._anchor, *(p.popen for p in host._spawned)])
            if survivors:
                problems.append(f"host {host.name}: processes did not die: {survivors}")
        for host in self.hosts:
            if _ip("netns", "del", host.netns, check=False).returncode != 0 and _netns_exists(host.netns):
                problems.append(f"could not delete the network namespace {host.netns}")
        if _ip("netns", "del", self.switch, check=False).returncode != 0 and _netns_exists(self.switch):
            problems.append(f"could not delete the network namespace {self.switch}")
        left = [name for name in _netns_names() if name.startswith(self.prefix + "-")]
        if left:
            problems.append(f"network namespaces left behind: {left}")
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            problems.append(f"files left behind in {self.root}")
        return problems


def reap_stale() -> list[str]:
    """Clean up the networks of test runs that died without closing them (their test process is
    gone): kill what still runs in their namespaces, delete the namespaces. Returns their names."""
    reaped = []
    for name in _netns_names():
        found = _STALE.match(name)
        if found is None or pid_alive(int(found.group(1))):
            continue
        try:
            ns = _ns_id(f"/run/netns/{name}")
        except OSError:
            continue
        _kill_namespace(ns, [])
        _ip("netns", "del", name, check=False)
        reaped.append(name)
    return reaped


# ------------------------------------------------------------------------------ helpers


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _netns_names() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def _netns_exists(name: str) -> bool:
    return name in _netns_names()


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _processes_in(ns: tuple[int, int]) -> list[int]:
    """Live processes whose network namespace is ``ns`` (a zombie has none: it is dead)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _ns_id(f"/proc/{entry}/ns/net") == ns:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _kill_namespace(ns: tuple[int, int] | None, children: Iterable[subprocess.Popen | None]) -> list[int]:
    """SIGKILL every process in ``ns`` until none is left (bounded); reap our own ``children``.
    Returns the pids still there at the deadline."""
    children = [c for c in children if c is not None]
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while True:
        pids = _processes_in(ns) if ns is not None else []
        for child in children:
            child.poll()
        if not pids:
            break
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    for child in children:
        try:
            child.wait(KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    return []
