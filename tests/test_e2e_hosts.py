"""A cluster across separate hosts: each a network namespace of its own with its own IP,
hostname and /dev/shm (tests/hosts.py, the ``make_hosts`` fixture). Nothing here reaches a
host's address from the test process; every driver runs on a host and prints what it saw."""

from __future__ import annotations

import json
import sys
import textwrap

# Echoes each line back and says what it got (one line per message, on stdout).
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    server = socket.create_server((sys.argv[1], 0))
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    for line in conn.makefile("rb"):
        print("received", line.decode().strip(), flush=True)
        conn.sendall(line)
    """
)

# Connects once; each command on stdin is "send X SECONDS" (send X, wait that long for its
# echo) or "wait X SECONDS" (wait for the echo of something sent before); answers "got X" or
# "nothing X". Any socket error ends it with "error ...": the connection must survive a cut.
ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    print("connected", flush=True)
    received = b""
    for command in sys.stdin:
        verb, word, seconds = command.split()
        try:
            if verb == "send":
                sock.sendall(word.encode() + b"\\n")
            sock.settimeout(float(seconds))
            while b"\\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    sys.exit("error: the connection closed")
                received += chunk
        except TimeoutError:
            print("nothing", word, flush=True)
            continue
        except OSError as exc:
            sys.exit(f"error: {exc!r}")
        line, _, received = received.partition(b"\\n")
        print("got", line.decode(), flush=True)
    """
)


def test_cut_silences_a_link_without_closing_its_connections_and_heal_restores_it(make_hosts):
    net = make_hosts(2)
    a, b = net
    server = a.spawn([sys.executable, "-c", ECHO_SERVER, a.ip], pipes=True)
    port = server.readline(timeout=30)
    client = b.spawn([sys.executable, "-c", ECHO_CLIENT, a.ip, port], pipes=True)
    assert client.readline(timeout=30) == "connected"

    client.send("send before 30")
    assert client.readline() == "got before"
    assert server.readline() == "received before"

    net.cut(a)
    client.send("send during 3")  # TCP keeps retrying it; nothing arrives while the link is cut
    assert client.readline() == "nothing during"
    assert not server.has_output(), "the server received something through a cut link"

    net.heal(a)
    client.send("wait during 60")  # the same connection, never closed: its retry gets through
    assert client.readline(timeout=90) == "got during"
    assert server.readline() == "received during"
    client.send("send after 30")
    assert client.readline() == "got after"
    assert client.poll() is None and server.poll() is None


def test_hosts_have_their_own_address_hostname_and_shared_memory(make_hosts):
    net = make_hosts(2)
    seen = {}
    for host in net:
        seen[host.name] = host.python(textwrap.dedent(
            """
            import json, os, socket, sys
            open("/dev/shm/mark-" + socket.gethostname(), "w").close()
            socket.create_server((sys.argv[1], 0)).close()  # the address is this host's
            print(json.dumps({"hostname": socket.gethostname(), "shm": sorted(os.listdir("/dev/shm")),
                              "tmpdir": os.environ["CLUSTER_TMPDIR"],
                              "others": {name: socket.gethostbyname(name) for name in sys.argv[2:]}}))
            """), host.ip, *(h.name for h in net if h is not host)).stdout
    for host in net:
        assert json.loads(seen[host.name]) == {
            "hostname": host.name, "shm": [f"mark-{host.name}"], "tmpdir": str(host.tmpdir),
            "others": {h.name: h.ip for h in net if h is not host}}
