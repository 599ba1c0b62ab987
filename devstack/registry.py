"""A real container registry for the dev stack and tests, and the code that publishes KubeOS images into it.

``RegistryServer`` runs Debian's ``docker-registry serve config.yml`` (distribution 2.8) on 127.0.0.1 and a free
port, optionally behind TLS (certificates from ``devstack.pki``) and with either basic auth (an htpasswd file of
bcrypt hashes) or token auth (``TokenServer``: a tiny issuer of RS256 JWTs whose signing certificate the registry
trusts as its ``rootcertbundle``). Images are built here from directories (tar layers, an image config, a
manifest; OCI or Docker media types) and pushed with the node worker's own client (``node_worker.registry``), so
pushing exercises the same auth and TLS code that pulling does.

``push_kubeos_image`` builds and pushes a KubeOS OS image for one ``osversion`` in either layout (the original's
``/os.tar`` or a plain root filesystem) and returns its reference and manifest digest.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devstack.net import free_port
from devstack.pki import CertFiles, CertificateAuthority, self_signed_rsa
from node_worker.files import sha256_file
from node_worker.images import os_release_text
from node_worker.registry import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryAccess,
    RegistryClient,
    digest_of,
    push_blob,
    push_manifest,
)

AuthMode = Literal["none", "htpasswd", "token"]
Layout = Literal["os.tar", "rootfs"]
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_START_POLLS = 200  # x 0.05 s: the registry is up in well under a second
_CHUNK = 1024 * 1024


# --- token auth ---------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The ``kid`` distribution expects: sha256 of the DER public key, first 240 bits, base32, ':' every 4."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    """A Docker token service (``GET /token?service=..&scope=..`` with Basic credentials) on 127.0.0.1.

    Known users get every action they ask for; anonymous and wrong-password requests get 401. ``issued``
    counts tokens handed out, so a test can tell that the bearer flow really ran.
    """

    def __init__(
        self, directory: Path, users: Mapping[str, str], *, service: str = "kubeos-dev", issuer: str = "kubeos-dev"
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.key, self.signer = self_signed_rsa(directory, "token-signer")
        self.kid = libtrust_key_id(self.key.public_key())
        self.issued = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None, "token server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _user(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if user in self.users and secrets.compare_digest(self.users[user], password) else None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(request.path).query)
        user = self._user(request.headers.get("Authorization", ""))
        if urlsplit(request.path).path != "/token" or user is None:
            request.send_response(401)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        body = json.dumps({"token": self.issue(user, access), "expires_in": 300}).encode()
        self.issued += 1
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def issue(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            "nbf": now - 30,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


# --- the registry process -----------------------------------------------------------------------------------


class RegistryServer:
    """``docker-registry serve`` on 127.0.0.1:<free port>; use as a context manager (stopped on exit).

    ``tls=True`` serves https with a certificate from ``ca`` (a new CA in ``directory`` if none is given);
    ``auth="htpasswd"`` or ``"token"`` protects it with ``users`` (name → password).
    """

    def __init__(
        self,
        directory: Path,
        *,
        tls: bool = False,
        ca: CertificateAuthority | None = None,
        auth: AuthMode = "none",
        users: Mapping[str, str] | None = None,
        program: str = "docker-registry",
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.auth = auth
        self.users = dict(users or {})
        self.program = program
        if auth != "none" and not self.users:
            raise ValueError(f"auth {auth!r} needs at least one user")
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca if ca is not None or not tls else CertificateAuthority(directory / "pki", "registry-ca")
        self.port = 0
        self.token_server: TokenServer | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry component of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_file(self) -> Path | None:
        return self.ca.cert_path if self.tls and self.ca is not None else None

    @property
    def log_file(self) -> Path:
        return self.directory / "registry.log"

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.directory / "storage")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.tls:
            assert self.ca is not None
            server: CertFiles = self.ca.issue_server("registry")
            config["http"]["tls"] = {"certificate": str(server.cert), "key": str(server.key)}
        if self.auth == "htpasswd":
            import bcrypt  # the embedded extra; only needed for basic auth

            lines = [
                f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in self.users.items()
            ]
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "kubeos-dev", "path": str(htpasswd)}}
        elif self.auth == "token":
            self.token_server = TokenServer(self.directory / "token", self.users)
            self.token_server.start()
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.signer.cert),
                }
            }
        return config

    def start(self) -> None:
        self.port = free_port()
        config_file = self.directory / "config.yml"
        config_file.write_text(yaml.safe_dump(self._config()))
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [self.program, "serve", str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        verify: ssl.SSLContext | bool = self._ssl_context() or False
        for _ in range(_START_POLLS):
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.program} exited at start-up: {self.log_file.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/v2/", verify=verify, timeout=2.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.program} did not answer on {self.url}: {self.log_file.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None

    def push_kubeos(self, osversion: str, *, layout: Layout = "os.tar", repository: str = "kubeos/os") -> PushedImage:
        """Build and push the KubeOS image of ``osversion`` here (what ``demo --imagetype docker`` publishes)."""
        with self.client() as client:
            return push_kubeos_image(client, osversion, self.directory / "images", layout=layout, repository=repository)

    def client(self, credentials: tuple[str, str] | None = None) -> RegistryClient:
        """A client for pushing (and inspecting); with auth, the first user's credentials by default."""
        if credentials is None and self.users:
            credentials = next(iter(self.users.items()))
        scheme = "https" if self.tls else "http"
        return RegistryClient(self.host, RegistryAccess(scheme, self._ssl_context() or True, credentials))


def write_auth_config(path: Path, registry: str, user: str, password: str) -> Path:
    """A docker-style config.json with credentials for ``registry`` (``auths`` → ``auth``: base64 user:pass)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {registry: {"auth": token}}}, indent=2))
    return path


# --- building and pushing images ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBlob:
    path: Path
    digest: str
    size: int
    diff_id: str  # digest of the uncompressed tar, listed in the image config
    media_type: str


@dataclass(frozen=True)
class PushedImage:
    reference: str  # registry/repository:tag (or @digest when pushed without a tag)
    digest: str  # digest of the manifest (or index) pushed
    media_type: str
    size: int


def _digest(path: Path) -> str:
    return f"sha256:{sha256_file(path)}"


def write_tar(source: Path, dest: Path) -> None:
    """The contents of ``source`` as an uncompressed tar with relative names (symlinks and hard links kept)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(os.listdir(source)):
            archive.add(source / name, arcname=name)


def make_layer(source: Path, blob_dir: Path, *, docker: bool = False) -> LayerBlob:
    """A gzip layer blob from the directory ``source`` (files named ``.wh.*`` are whiteouts, as in OCI)."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    plain = blob_dir / f"layer-{secrets.token_hex(6)}.tar"
    write_tar(source, plain)
    try:
        return layer_from_tar(plain, blob_dir, docker=docker)
    finally:
        plain.unlink()


def layer_from_tar(plain: Path, blob_dir: Path, *, docker: bool = False) -> LayerBlob:
    """A gzip layer blob from an uncompressed tar (tests craft hostile archives this way)."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    blob = blob_dir / f"layer-{secrets.token_hex(6)}.tar.gz"
    with plain.open("rb") as src, gzip.GzipFile(blob, "wb", mtime=0) as out:
        shutil.copyfileobj(src, out, _CHUNK)
    media_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
    return LayerBlob(blob, _digest(blob), blob.stat().st_size, _digest(plain), media_type)


def push_image(
    client: RegistryClient,
    repository: str,
    tag: str | None,
    layers: Sequence[LayerBlob],
    *,
    architecture: str = "amd64",
    docker: bool = False,
) -> PushedImage:
    """Push the layers, an image config and a manifest (by ``tag``, or by digest only when ``tag`` is None)."""
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_raw = json.dumps(config, sort_keys=True).encode()
    config_digest = digest_of(config_raw)
    for layer in layers:
        push_blob(client, repository, layer.digest, layer.path)
    push_blob(client, repository, config_digest, config_raw)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": config_digest,
            "size": len(config_raw),
        },
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    raw = json.dumps(manifest, indent=2).encode()
    digest = push_manifest(client, repository, tag or digest_of(raw), raw, media_type)
    return PushedImage(_reference(client, repository, tag, digest), digest, media_type, len(raw))


def push_index(
    client: RegistryClient,
    repository: str,
    tag: str,
    images: Sequence[tuple[PushedImage, str]],
    *,
    docker: bool = False,
) -> PushedImage:
    """Push an image index (manifest list) of already pushed manifests, each with its architecture."""
    media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.size,
                "platform": {"os": "linux", "architecture": arch},
            }
            for image, arch in images
        ],
    }
    raw = json.dumps(index, indent=2).encode()
    digest = push_manifest(client, repository, tag, raw, media_type)
    return PushedImage(_reference(client, repository, tag, digest), digest, media_type, len(raw))


def _reference(client: RegistryClient, repository: str, tag: str | None, digest: str) -> str:
    return f"{client.registry}/{repository}:{tag}" if tag else f"{client.registry}/{repository}@{digest}"


# --- KubeOS OS images ---------------------------------------------------------------------------------------


def version_tag(osversion: str) -> str:
    """A tag for ``osversion``: ``KubeOS 1.0.2`` → ``1.0.2`` (its last word, tag characters only)."""
    word = osversion.split()[-1] if osversion.split() else "latest"
    tag = re.sub(r"[^\w.-]", "-", word).lstrip(".-")
    return tag[:128] or "latest"


def write_kubeos_rootfs(root: Path, osversion: str) -> None:
    """A small KubeOS-like root filesystem whose os-release PRETTY_NAME is ``osversion`` (what kubelet reports)."""
    for directory in ("etc", "usr/bin", "usr/lib", "var/lib", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/os-release").write_text(os_release_text(osversion))  # the same as the disk images
    (root / "etc/hostname").write_text("kubeos\n")
    (root / "usr/lib/kubeos-release").write_text(f"{osversion}\n")
    tool = root / "usr/bin/kubeos-version"
    tool.write_text(f"#!/bin/sh\necho '{osversion}'\n")
    tool.chmod(0o4755)  # setuid: survives only if extraction and mkfs keep modes
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib")):
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)


def kubeos_layers(work: Path, osversion: str, layout: Layout, *, docker: bool = False) -> list[LayerBlob]:
    """The layers of a KubeOS image: one layer holding ``/os.tar``, or the root filesystem as a layer."""
    tree = work / "rootfs"
    shutil.rmtree(tree, ignore_errors=True)
    write_kubeos_rootfs(tree, osversion)
    if layout == "rootfs":
        return [make_layer(tree, work / "blobs", docker=docker)]
    holder = work / "ostar-layer"
    shutil.rmtree(holder, ignore_errors=True)
    holder.mkdir(parents=True)
    write_tar(tree, holder / "os.tar")
    return [make_layer(holder, work / "blobs", docker=docker)]


def push_kubeos_image(
    client: RegistryClient,
    osversion: str,
    work: Path,
    *,
    layout: Layout = "os.tar",
    repository: str = "kubeos/os",
    tag: str | None = None,
    docker: bool = False,
) -> PushedImage:
    """Build and push the KubeOS image of ``osversion`` (``repository:<version>`` by default).

    Returns the reference to put in ``spec.dockerimage`` and the manifest digest for ``spec.checksum``.
    """
    work.mkdir(parents=True, exist_ok=True)
    layers = kubeos_layers(work, osversion, layout, docker=docker)
    try:
        return push_image(client, repository, tag or version_tag(osversion), layers, docker=docker)
    finally:
        for layer in layers:
            layer.path.unlink(missing_ok=True)
