"""A test workload: an HTTP server answering every request with its name, and optionally a
TCP server that prefixes each line it reads with its name (Istio's tcp-echo).

HTTP paths change the answer, as Istio's httpbin does for its tasks:
  /delay/MS     answers after MS milliseconds
  /status/CODE  answers with CODE
  anything else 200 (or --status, for a workload that always fails; --flaky answers every
  other request with 503)
Each HTTP answer carries `x-peer-identity`: the caller's SPIFFE ID from the sidecar's
x-forwarded-client-cert (empty without one). `--https PORT --cert F --key F` serves the same
over TLS (an external HTTPS service). Prints "ready" once every port listens.
"""
import argparse
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def peer(xfcc):
    """The URI of the last (nearest) element of an x-forwarded-client-cert header."""
    last = xfcc.split(",")[-1] if xfcc else ""
    for kv in last.split(";"):
        if kv.startswith("URI="):
            return kv[4:]
    return ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--http", type=int)
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--flaky", action="store_true")
    p.add_argument("--https", type=int)
    p.add_argument("--cert")
    p.add_argument("--key")
    args = p.parse_args()
    served = [0]
    lock = threading.Lock()

    class Http(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            status, delay = args.status, args.delay_ms
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) == 2 and parts[0] == "delay":
                delay = int(parts[1])
            if len(parts) == 2 and parts[0] == "status":
                status = int(parts[1])
            if args.flaky:
                with lock:
                    served[0] += 1
                    if served[0] % 2 == 1:
                        status = 503
            if delay:
                time.sleep(delay / 1000)
            body = (args.name + "\n").encode()
            self.send_response(status)
            self.send_header("x-peer-identity", peer(self.headers.get("x-forwarded-client-cert", "")))
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_GET

        def log_message(self, *a):
            pass

        def handle(self):
            # A client the sidecar gave up on (circuit breaking, timeouts) is not an error.
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            try:
                for line in self.rfile:
                    self.wfile.write(args.name.encode() + b" " + line)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class TcpServer(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    servers = []
    if args.http:
        ThreadingHTTPServer.daemon_threads = True
        servers.append(ThreadingHTTPServer(("0.0.0.0", args.http), Http))
    if args.https:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
        https = ThreadingHTTPServer(("0.0.0.0", args.https), Http)
        https.socket = tls.wrap_socket(https.socket, server_side=True)
        servers.append(https)
    for port in args.tcp:
        servers.append(TcpServer(("0.0.0.0", port), Echo))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # runs until the test closes stdin or kills it


main()
