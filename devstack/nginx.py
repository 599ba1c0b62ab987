"""Debian's nginx with its own prefix and config, on 127.0.0.1 and a free port, serving a directory over TLS.

The tests use it where a server other than our own must be the judge (``ssl_verify_client on`` gives real mutual
TLS: a client without a certificate signed by ``client_ca`` gets 400); the staging benchmark serves its image
with it, as an image repository would, so that the server's cost is that of a production server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from devstack.net import free_port
from devstack.procstat import child_pids, process_cpu


class Nginx:
    def __init__(self, prefix: Path, root: Path, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        if shutil.which("nginx") is None:
            raise RuntimeError("nginx is not installed (Debian package nginx; `make deps`)")
        self.prefix = prefix
        self.root = root
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        # As root, nginx switches its workers to "nobody", who cannot read pytest's 0700 temp directories.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        verify = f"ssl_client_certificate {client_ca};\n        ssl_verify_client on;\n" if client_ca else ""
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(
            f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream img; }}
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {verify}
        root {root};
    }}
}}
""",
            encoding="utf-8",
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the master and its worker process."""
        if self._proc is None:
            return 0.0
        return sum(process_cpu(pid) for pid in (self._proc.pid, *child_pids(self._proc.pid)))

    def __enter__(self) -> Nginx:
        cmd = ["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log")]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log = (self.prefix / "error.log").read_text() if (self.prefix / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited: {err} {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
