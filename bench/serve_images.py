"""A static image server for benchmarks: serves every file of a directory from memory."""
from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    files = {"/" + f: open(os.path.join(root, f), "rb").read() for f in os.listdir(root)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            body = files.get(self.path.split("?")[0])
            code = 200 if body is not None else 404
            body = body or b""
            self.send_response(code)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

    Server(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
