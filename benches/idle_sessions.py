#!/usr/bin/env python3
"""Hub memory per idle durable session, connected and offline.

Starts the hub pinned to one core (--storage memory), opens N version-2
connections that each create a durable session (preface + Hello, laid out
as docs/protocol.md's hex dumps show), reads their WelcomeV2, and reports
the hub's RSS growth per session while they are connected and after they
disconnect (the sessions stay, offline).

    benches/idle_sessions.py [N]        # default 5000
    benches/idle_sessions.py N --v1     # version-1 connections, for comparison
"""
import os, resource, socket, subprocess, sys, time

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
N = int(ARGS[0]) if ARGS else 5000
V1 = "--v1" in sys.argv  # version-1 connections instead (no session)
PORT = 17995
HUB = os.path.join(os.path.dirname(__file__), "..", "target", "release", "relayhub")

PREFACE_V2 = b"RLYHUB\x02\x00"
# Hello::new_session(1, true): header (len 40, kind 5) and the 40-byte root.
HELLO = bytes.fromhex("2800000005000000" "0100000000000000" + "00" * 24 + "0100000000000000")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, N + 1000), hard))
    hub = subprocess.Popen(
        ["taskset", "-c", "0", HUB, "--listen", f"127.0.0.1:{PORT}", "--shards", "1",
         "--storage", "memory", "--pin", "false", "--idle-timeout-ms", "0"],
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", PORT)).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)
        base = rss_kib(hub.pid)
        conns = []
        for _ in range(N):
            sock = socket.create_connection(("127.0.0.1", PORT))
            sock.sendall(b"RLYHUB\x01\x00" if V1 else PREFACE_V2 + HELLO)
            conns.append(sock)
        for sock in conns:
            got = b""
            # Preface (8) + WelcomeV2 frame (8 + 144), or v1's Welcome.
            while len(got) < (8 if V1 else 160):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("hub closed a connection")
                got += chunk
        time.sleep(1.0)
        connected = rss_kib(hub.pid)
        for sock in conns:
            sock.close()
        time.sleep(2.0)
        offline = rss_kib(hub.pid)
        print(f"| sessions | base RSS KiB | connected: bytes/session | offline: bytes/session |")
        print(f"| ---: | ---: | ---: | ---: |")
        print(f"| {N} | {base} | {(connected - base) * 1024 // N} | {(offline - base) * 1024 // N} |")
    finally:
        hub.terminate()
        hub.wait()


if __name__ == "__main__":
    main()
