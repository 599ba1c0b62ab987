"""A codec server for the Temporal Web UI and CLI: shows encrypted payloads decrypted, to those who can reach it.

It follows the codec server protocol (``POST /decode`` and ``/encode``, also under ``/<namespace>/``; bodies are
proto3 JSON ``{"payloads": [...]}``) and answers CORS preflights for the Web UI's origin. It holds the key, so run it
next to the people allowed to read rollouts (it binds 127.0.0.1 by default) and point the Web UI's "codec server"
setting, or ``temporal --codec-endpoint``, at it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import logging
import threading
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from workers.codec import KEY_ENV, codec_from_env

log = logging.getLogger("kubeos_rollout.codec_server")
_MAX_BODY = 8 * 1024 * 1024


class CodecServer:
    """``with CodecServer(codec, origins=[...]) as server: server.url``; ``port=0`` picks a free port."""

    def __init__(self, codec: PayloadCodec, *, host: str = "127.0.0.1", port: int = 0, origins: list[str]) -> None:
        self.codec = codec
        self.origins = set(origins)
        self._server = http.server.ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> CodecServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> CodecServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def transform(self, action: str, body: bytes) -> bytes:
        payloads = Payloads()
        json_format.Parse(body or b"{}", payloads)
        run = self.codec.decode if action == "decode" else self.codec.encode
        result = asyncio.run(run(list(payloads.payloads)))
        return json_format.MessageToJson(Payloads(payloads=result)).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: http.server.ThreadingHTTPServer

    @property
    def owner(self) -> CodecServer:
        owner: CodecServer = self.server.owner  # type: ignore[attr-defined]
        return owner

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _cors(self) -> None:
        origin = self.headers.get("Origin", "")
        if origin and origin in self.owner.origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization")
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header("Vary", "Origin")

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.end_headers()

    def do_POST(self) -> None:
        action = self.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ("encode", "decode"):
            self._reply(404, {"error": f"unknown path {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._reply(413, {"error": "body too large"})
            return
        try:
            body = self.owner.transform(action, self.rfile.read(length))
        except (json_format.ParseError, ValueError) as exc:
            self._reply(400, {"error": f"not a payloads document: {exc}"})
            return
        except Exception as exc:  # a payload that does not decrypt (wrong key, tampered): say so, keep serving
            self._reply(422, {"error": f"cannot {action}: {type(exc).__name__}"})
            return
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reply(self, status: int, document: dict[str, str]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def register(sub: Any) -> None:
    parser = sub.add_parser("codec-server", help=f"serve the payload codec ({KEY_ENV}) to the Web UI and CLI")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--web-ui-origin", action="append", default=[], help="origin allowed by CORS, e.g. http://127.0.0.1:8233"
    )
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    codec = codec_from_env()
    if codec is None:
        print(f"error: {KEY_ENV} is not set: there is nothing to decode with")
        return 2
    server = CodecServer(codec, host=args.host, port=args.port, origins=args.web_ui_origin)
    log.info("codec server on %s (CORS origins: %s)", server.url, ", ".join(args.web_ui_origin) or "none")
    server.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
