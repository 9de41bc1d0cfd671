"""A test client: N HTTP requests (or TCP exchanges) to one URL, from C concurrent workers,
each request on a new connection as a separate curl would be. Prints one JSON object:
  bodies      answer body -> count (2xx answers only)
  statuses    HTTP status -> count
  errors      connection errors (reset, refused, timeout) -> count
  overloaded  answers carrying x-envoy-overloaded
  peers       the x-peer-identity the workload answered with -> count (2xx answers only)
"""
import argparse
import json
import socket
import ssl
import threading
import http.client
from collections import Counter
from urllib.parse import urlsplit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url", help="http://host:port/path, https://host:port/path or tcp://host:port")
    p.add_argument("-n", type=int, default=1)
    p.add_argument("-c", type=int, default=1)
    p.add_argument("-H", action="append", default=[], help="header 'Name: value'")
    p.add_argument("-X", default="GET", help="HTTP method")
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--cacert", help="for https: the CA that must have signed the server (SNI: the URL host)")
    args = p.parse_args()
    u = urlsplit(args.url)
    headers = dict(h.split(":", 1) for h in args.H)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    out = {"bodies": Counter(), "statuses": Counter(), "errors": Counter(), "overloaded": 0,
           "peers": Counter()}
    lock = threading.Lock()

    def one():
        if u.scheme == "tcp":
            with socket.create_connection((u.hostname, u.port), timeout=args.timeout) as s:
                s.sendall(b"hello\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    raise ConnectionError("closed without an answer")
                return 200, data.decode().strip(), False, ""
        if u.scheme == "https":
            tls = ssl.create_default_context(cafile=args.cacert)
            conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=args.timeout, context=tls)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=args.timeout)
        try:
            conn.request(args.X, u.path or "/", headers=headers)
            r = conn.getresponse()
            body = r.read().decode().strip()
            overloaded = r.getheader("x-envoy-overloaded") is not None
            return r.status, body, overloaded, r.getheader("x-peer-identity") or ""
        finally:
            conn.close()

    def worker(count):
        for _ in range(count):
            try:
                status, body, overloaded, peer = one()
                with lock:
                    out["statuses"][str(status)] += 1
                    if 200 <= status < 300:
                        out["bodies"][body] += 1
                        out["peers"][peer] += 1
                    out["overloaded"] += int(overloaded)
            except Exception as e:  # every failure is counted, by kind
                with lock:
                    out["errors"][type(e).__name__] += 1

    share = [args.n // args.c + (1 if i < args.n % args.c else 0) for i in range(args.c)]
    threads = [threading.Thread(target=worker, args=(k,)) for k in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


main()
