"""A small OCI distribution client: pull (and, for the dev stack and tests, push) images without a daemon.

The host has no container engine, so the node worker talks the distribution HTTP API itself (httpx, sync: the
stage activity runs on a thread pool). What it guarantees:

* every byte is verified: manifests by the sha256 of the raw bytes received, blobs by hashing while streaming to
  disk and checking the size, so nothing unverified ever reaches the slot;
* memory stays bounded: blobs go to disk in chunks; manifests are capped at 4 MiB (distribution's own limit);
* failures are typed (``ContainerImageError`` subclasses with a ``retryable`` flag), so the activity layer can tell bad
  input (wrong name, missing tag, digest mismatch, auth, TLS trust) from a network problem worth retrying.

Transport policy (decided here, in one place):

* a ``cacert`` is given → https, trusting only that CA (plus a client certificate for mTLS);
* no ``cacert`` and the registry is loopback (127.0.0.0/8, ::1, localhost) or ``flagSafe`` is set → plain http;
* otherwise → https with the system trust store.

There is no https→http fallback: silently downgrading would defeat the point of TLS.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import platform
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urljoin

import httpx

from models.host import DEFAULT_REGISTRY_AUTH_CONFIG, HostErrorType
from node_worker.errors import HostError
from node_worker.files import file_chunks
from node_worker.tls import ssl_error_in

CHUNK_SIZE = 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DEFAULT_AUTH_CONFIG = Path(DEFAULT_REGISTRY_AUTH_CONFIG)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# Docker Hub's names: "docker.io" in references, another host for the API, another key in config.json.
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")

# platform.machine() → GOARCH (and variant), the names image indexes use.
_GOARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "loongarch64": ("loong64", ""),
}


# --- errors -------------------------------------------------------------------------------------------------


class ContainerImageError(HostError):
    """Base of every container-image failure (pull and root filesystem build).

    Each subclass carries the ``HostErrorType`` the activity layer reports (``kind``); ``retryable`` follows
    from it: only network-type failures are worth another attempt, the rest is bad input or a bad image.
    """

    default_kind: ClassVar[HostErrorType] = HostErrorType.CONTAINER_IMAGE

    def __init__(self, message: str) -> None:
        super().__init__(self.default_kind, message)


class ImageReferenceInvalid(ContainerImageError):
    """The image name is malformed (bad input)."""

    default_kind = HostErrorType.INVALID_INPUT


class RegistryUnreachable(ContainerImageError):
    """Connecting to or reading from the registry failed (network; retryable)."""

    default_kind = HostErrorType.DOWNLOAD_RETRY


class RegistryServerError(ContainerImageError):
    """The registry answered 5xx or 429, or cut a transfer short (retryable)."""

    default_kind = HostErrorType.DOWNLOAD_RETRY


class RegistryTLSError(ContainerImageError):
    """The registry's certificate is not trusted by the configured CA, or TLS could not be set up."""

    default_kind = HostErrorType.CERTIFICATE


class RegistryAuthError(ContainerImageError):
    """Credentials are missing, wrong or insufficient (401/403, token endpoint refused)."""


class ImageNotFound(ContainerImageError):
    """The repository, tag, manifest or blob does not exist."""


class ManifestUnknown(ImageNotFound):
    """The tag or manifest digest is not in the repository ("manifest unknown")."""


class BlobUnknown(ImageNotFound):
    """A blob the manifest names is missing from the registry."""


class DigestMismatch(ContainerImageError):
    """Content received does not match the digest or size it was asked for."""

    default_kind = HostErrorType.CHECKSUM_MISMATCH


class ChecksumMismatch(DigestMismatch):
    """The user's ``checksum`` is neither the image's index digest nor its platform manifest digest."""


class UnsupportedImage(ContainerImageError):
    """The image is of a kind we do not handle (schema 1, no manifest for this platform, unknown media type)."""

    default_kind = HostErrorType.INVALID_INPUT


class RegistryProtocolError(ContainerImageError):
    """The registry answered something the distribution API does not allow (unexpected status, bad JSON)."""

    default_kind = HostErrorType.DOWNLOAD_FAILED


# --- image references ---------------------------------------------------------------------------------------

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^\w[\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^(sha256:[a-fA-F0-9]{64}|sha512:[a-fA-F0-9]{128})$")


@dataclass(frozen=True)
class ImageReference:
    """``[registry[:port]/]repository[:tag][@digest]``, split the way docker does it."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image_reference(text: str) -> ImageReference:
    """Parse a ``dockerimage`` value; raise ``ImageReferenceInvalid`` naming what is wrong.

    A first component with a dot, a colon or ``localhost`` is a registry host (docker's rule); otherwise the
    image lives on Docker Hub (``library/`` prepended to one-component names). No tag and no digest means
    ``latest``, as ``docker pull`` (which the original used) does.
    """
    if not text or text != text.strip():
        raise ImageReferenceInvalid(f"Invalid image name: {text!r}: empty or surrounded by whitespace")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ImageReferenceInvalid(f"Invalid image name: {text}: digest {digest!r} is not sha256:<64 hex>")
        digest = digest.lower()
    tag = None
    last_slash = rest.rfind("/")
    if ":" in rest[last_slash + 1 :]:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise ImageReferenceInvalid(f"Invalid image name: {text}: tag {tag!r} is not valid")
    parts = rest.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN_RE.match(first):
            raise ImageReferenceInvalid(f"Invalid image name: {text}: registry host {first!r} is not valid")
        registry, path = first, parts[1:]
    else:
        registry, path = DOCKER_HUB, parts
        if len(path) == 1:
            path = ["library", *path]
    for component in path:
        if not _PATH_COMPONENT_RE.match(component):
            raise ImageReferenceInvalid(
                f"Invalid image name: {text}: repository component {component!r} must be lower-case "
                "letters and digits separated by '.', '_', '__' or '-'"
            )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository="/".join(path), tag=tag, digest=digest)


# --- transport: scheme, trust, credentials ------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryAccess:
    """How to talk to one registry: the scheme, what to trust, which credentials to offer."""

    scheme: str
    verify: ssl.SSLContext | bool = True
    credentials: tuple[str, str] | None = None


def is_loopback_host(host_port: str) -> bool:
    host = host_port
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_credentials(auth_config: Path | None, registry: str) -> tuple[str, str] | None:
    """Credentials for ``registry`` from a docker-style config.json (``auths`` → ``auth``: base64 user:pass).

    A missing file means anonymous access; an unreadable or malformed one is an error (a typo in the host's
    set-up should not silently turn into "anonymous").
    """
    if auth_config is None or not auth_config.exists():
        return None
    try:
        doc = json.loads(auth_config.read_text())
        auths = doc.get("auths", {})
        if not isinstance(auths, dict):
            raise ValueError("'auths' is not an object")
    except (OSError, ValueError) as exc:
        raise RegistryAuthError(f"cannot read registry credentials from {auth_config}: {exc}") from exc
    wanted = {registry} | (set(_DOCKER_HUB_AUTH_KEYS) if registry == DOCKER_HUB else set())
    for key, entry in auths.items():
        host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]
        if (key in wanted or host in wanted) and isinstance(entry, dict):
            return _decode_auth_entry(auth_config, key, entry)
    return None


def _decode_auth_entry(path: Path, key: str, entry: Mapping[str, Any]) -> tuple[str, str]:
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryAuthError(f"{path}: auths[{key!r}].auth is not base64 of user:password") from exc
        if not sep:
            raise RegistryAuthError(f"{path}: auths[{key!r}].auth does not contain 'user:password'")
        return user, password
    if entry.get("username") and "password" in entry:
        return str(entry["username"]), str(entry["password"])
    raise RegistryAuthError(f"{path}: auths[{key!r}] has neither 'auth' nor 'username'/'password'")


def plan_access(
    ref: ImageReference,
    *,
    tls: ssl.SSLContext | None = None,
    flag_safe: bool = False,
    auth_config: Path | None = DEFAULT_AUTH_CONFIG,
) -> RegistryAccess:
    """Apply the transport policy of this module's docstring to one image reference. ``tls`` is the context
    built from the spec's ``cacert`` (and client certificate), see ``node_worker.tls``."""
    credentials = load_credentials(auth_config, ref.registry)
    if tls is not None:
        return RegistryAccess("https", tls, credentials)
    if is_loopback_host(ref.registry) or flag_safe:
        return RegistryAccess("http", True, credentials)
    return RegistryAccess("https", True, credentials)


# --- the client: requests, auth challenges, error mapping ----------------------------------------------------

_CHALLENGE_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


def _error_codes(response: httpx.Response) -> str:
    """The distribution API's ``{"errors":[{"code":..,"message":..}]}`` as text, if present."""
    try:
        errors = response.json().get("errors", [])
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or response.reason_phrase
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return response.reason_phrase


Content = bytes | Path | None


class RegistryClient:
    """One registry, one httpx.Client; answers 401 challenges (Bearer tokens per scope, or Basic) transparently."""

    def __init__(self, registry: str, access: RegistryAccess, *, timeout: float = 60.0) -> None:
        self.registry = registry
        self.access = access
        self.base_url = f"{access.scheme}://{registry}"
        self._http = httpx.Client(
            verify=access.verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            follow_redirects=True,
        )
        self._auth_headers: dict[str, str] = {}  # scope → Authorization header value
        self._basic = False  # the registry asked for Basic: send it to every scope

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        repository: str,
        actions: Sequence[str] = ("pull",),
        headers: Mapping[str, str] | None = None,
        content: Content = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request, authenticating on a 401 and retrying once. Statuses are left to the caller,
        except auth failures (``RegistryAuthError``) and transport failures (unreachable/TLS)."""
        scope = f"repository:{repository}:{','.join(actions)}"
        response = self._send(method, path_or_url, scope, headers, content, stream)
        if response.status_code == 401:
            challenge = response.headers.get("www-authenticate", "")
            response.close()
            self._authenticate(challenge, scope)
            response = self._send(method, path_or_url, scope, headers, content, stream)
            if response.status_code == 401:
                response.close()
                raise RegistryAuthError(
                    f"registry {self.registry} refused the credentials for {scope} ({_error_codes(response)})"
                )
        if response.status_code == 403:
            response.close()
            raise RegistryAuthError(f"registry {self.registry} denied {method} {path_or_url} ({scope})")
        return response

    def _send(
        self,
        method: str,
        path_or_url: str,
        scope: str,
        headers: Mapping[str, str] | None,
        content: Content,
        stream: bool,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if scope in self._auth_headers:
            all_headers["Authorization"] = self._auth_headers[scope]
        elif self._basic and self.access.credentials:
            all_headers["Authorization"] = _basic_header(self.access.credentials)
        url = self.url(path_or_url)
        body: bytes | Iterator[bytes] | None = content if not isinstance(content, Path) else None
        if isinstance(content, Path):
            body = file_chunks(content)  # fresh per attempt, so a retried upload starts over
            all_headers.setdefault("Content-Length", str(content.stat().st_size))
        try:
            request = self._http.build_request(method, url, headers=all_headers, content=body)
            response = self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if self.access.scheme == "https" and response.url.scheme != "https":
            response.close()
            raise RegistryTLSError(f"registry {self.registry}: {url} redirected to {response.url}, which is not https")
        if response.status_code == 429 or response.status_code >= 500:
            response.close()
            raise RegistryServerError(f"registry {self.registry} answered {response.status_code} to {method} {url}")
        return response

    def _transport_error(self, exc: httpx.TransportError) -> ContainerImageError:
        cause = ssl_error_in(exc, ssl.SSLError)
        if cause is not None:
            return RegistryTLSError(f"TLS with registry {self.base_url} failed: {cause}")
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return RegistryUnreachable(f"cannot reach registry {self.base_url}: {exc or type(exc).__name__}")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return RegistryProtocolError(f"registry {self.base_url}: {exc}")
        return RegistryUnreachable(f"connection to registry {self.base_url} failed: {exc or type(exc).__name__}")

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.access.credentials:
                raise RegistryAuthError(
                    f"registry {self.registry} requires credentials (Basic) and the auth config has none for it"
                )
            self._basic = True
            self._auth_headers[scope] = _basic_header(self.access.credentials)
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryAuthError(f"registry {self.registry} sent an unusable challenge: {challenge!r}")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        headers = {"Authorization": _basic_header(self.access.credentials)} if self.access.credentials else {}
        realm = httpx.URL(params["realm"])
        if headers and realm.scheme != "https" and not is_loopback_host(realm.host):
            raise RegistryAuthError(
                f"registry {self.registry}: refusing to send credentials to the token service {realm} over plain http"
            )
        try:
            answer = self._http.get(params["realm"], params=query, headers=headers)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if answer.status_code in (401, 403):
            raise RegistryAuthError(
                f"token service {params['realm']} refused {scope} for registry {self.registry} "
                f"({answer.status_code}{', no credentials configured' if not headers else ''})"
            )
        if answer.status_code != 200:
            raise RegistryServerError(f"token service {params['realm']} answered {answer.status_code}")
        try:
            doc = answer.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryProtocolError(f"token service {params['realm']} returned no token")
        self._auth_headers[scope] = f"Bearer {token}"


def _basic_header(credentials: tuple[str, str] | None) -> str:
    assert credentials is not None
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def open_client(
    ref: ImageReference,
    *,
    tls: ssl.SSLContext | None = None,
    flag_safe: bool = False,
    auth_config: Path | None = DEFAULT_AUTH_CONFIG,
) -> RegistryClient:
    access = plan_access(ref, tls=tls, flag_safe=flag_safe, auth_config=auth_config)
    return RegistryClient(ref.api_host, access)


# --- pulling: manifests and blobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Descriptor:
        try:
            digest, size = doc["digest"], doc["size"]
            if not isinstance(size, int) or size < 0 or not _DIGEST_RE.match(digest):
                raise ValueError(f"bad digest {digest!r} or size {size!r}")
            return cls(str(doc.get("mediaType", "")), digest.lower(), size, doc.get("platform") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryProtocolError(f"{where}: malformed descriptor {doc!r}: {exc}") from exc


@dataclass(frozen=True)
class Manifest:
    """A manifest (or index) as received: its raw bytes' digest and the parsed document."""

    media_type: str
    digest: str
    raw: bytes
    doc: Mapping[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class ResolvedImage:
    """An image resolved to one platform manifest. ``index_digest`` is set when the tag named an index."""

    reference: ImageReference
    manifest_digest: str
    index_digest: str | None
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def digest(self) -> str:
        """The digest ``docker pull`` prints for the reference (the repo digest): the index's, if any."""
        return self.index_digest or self.manifest_digest


def host_platform() -> tuple[str, str]:
    """(GOARCH, variant) of this machine, the names image indexes use."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, (machine, ""))


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def fetch_manifest(client: RegistryClient, ref: ImageReference, reference: str) -> Manifest:
    """GET a manifest by tag or digest; its digest is computed from the raw bytes and checked when pinned."""
    accept = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
    path = f"/v2/{ref.repository}/manifests/{reference}"
    response = client.request("GET", path, repository=ref.repository, headers={"Accept": accept}, stream=True)
    try:
        if response.status_code == 404:
            response.read()
            raise ManifestUnknown(
                f"manifest unknown: {ref.registry}/{ref.repository}:{reference} not found ({_error_codes(response)})"
            )
        if response.status_code != 200:
            response.read()
            raise RegistryProtocolError(
                f"GET manifest {ref.repository}:{reference} from {ref.registry}: {response.status_code} "
                f"({_error_codes(response)})"
            )
        raw = bytearray()
        try:
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise UnsupportedImage(f"manifest {ref}: larger than {MAX_MANIFEST_BYTES} bytes")
        except httpx.TransportError as exc:
            raise client._transport_error(exc) from exc
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        header_digest = response.headers.get("docker-content-digest", "").lower()
    finally:
        response.close()
    algorithm = reference.split(":", 1)[0] if _DIGEST_RE.match(reference) else "sha256"
    digest = digest_of(bytes(raw), algorithm)
    if _DIGEST_RE.match(reference) and digest != reference.lower():
        raise DigestMismatch(f"manifest {ref.repository}@{reference}: received content has digest {digest}")
    if header_digest.startswith(f"{algorithm}:") and header_digest != digest:
        raise DigestMismatch(
            f"manifest {ref}: registry says Docker-Content-Digest {header_digest}, content has digest {digest}"
        )
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise RegistryProtocolError(f"manifest {ref}: not valid JSON: {exc}") from exc
    return Manifest(_manifest_type(doc, content_type, ref), digest, bytes(raw), doc)


def _manifest_type(doc: Mapping[str, Any], content_type: str, ref: ImageReference) -> str:
    if doc.get("schemaVersion") == 1:
        raise UnsupportedImage(f"image {ref}: Docker schema 1 manifests are not supported (push it as schema 2 or OCI)")
    media_type = str(doc.get("mediaType") or content_type)
    if media_type in (*MANIFEST_TYPES, *INDEX_TYPES):
        return media_type
    # OCI allows omitting mediaType; fall back on the document's shape.
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc:
        return OCI_MANIFEST
    raise UnsupportedImage(f"image {ref}: unsupported manifest media type {media_type!r}")


def select_platform(index: Manifest, ref: ImageReference, architecture: str, variant: str = "") -> Descriptor:
    """Pick linux/<architecture> from an index; prefer the host's variant, accept any when only one matches."""
    entries = index.doc.get("manifests")
    if not isinstance(entries, list):
        raise RegistryProtocolError(f"image index {ref}: 'manifests' is not a list")
    descriptors = [Descriptor.from_json(e, f"image index {ref}") for e in entries]
    matching = [
        d for d in descriptors if d.platform.get("os") == "linux" and d.platform.get("architecture") == architecture
    ]
    for candidate in matching:
        if not variant or candidate.platform.get("variant", variant) == variant:
            return candidate
    if matching:
        return matching[0]
    offered = ", ".join(sorted({f"{d.platform.get('os')}/{d.platform.get('architecture')}" for d in descriptors}))
    raise UnsupportedImage(f"image {ref} has no linux/{architecture} manifest (it offers: {offered or 'nothing'})")


def resolve_image(client: RegistryClient, ref: ImageReference, *, architecture: str | None = None) -> ResolvedImage:
    """Fetch the manifest for ``ref``; if it is an index, follow it to this host's platform."""
    arch, variant = (architecture, "") if architecture else host_platform()
    top = fetch_manifest(client, ref, ref.reference)
    index_digest = None
    manifest = top
    if top.is_index:
        chosen = select_platform(top, ref, arch, variant)
        manifest = fetch_manifest(client, ref, chosen.digest)
        if manifest.is_index:
            raise UnsupportedImage(f"image {ref}: nested image indexes are not supported")
        if len(manifest.raw) != chosen.size:
            raise DigestMismatch(
                f"manifest {ref.repository}@{chosen.digest}: index says {chosen.size} bytes, got {len(manifest.raw)}"
            )
        index_digest = top.digest
    where = f"manifest {ref}@{manifest.digest}"
    layers = manifest.doc.get("layers")
    if not isinstance(layers, list):
        raise RegistryProtocolError(f"{where}: 'layers' is not a list")
    return ResolvedImage(
        reference=ref,
        manifest_digest=manifest.digest,
        index_digest=index_digest,
        config=Descriptor.from_json(manifest.doc.get("config"), where),
        layers=tuple(Descriptor.from_json(layer, where) for layer in layers),
    )


def normalise_checksum(checksum: str) -> str:
    """``<hex>`` or ``sha256:<hex>`` (any case) → ``sha256:<lower hex>``."""
    value = checksum.strip().lower()
    return value if ":" in value else f"sha256:{value}"


def verify_checksum(image: ResolvedImage, checksum: str) -> None:
    """The original compared ``checksum`` with the repo digest (the index's for multi-arch images); users who
    copy the platform manifest's digest are right too, so both are accepted. Empty ``checksum``: nothing to do."""
    if not checksum:
        return
    wanted = normalise_checksum(checksum)
    accepted = {image.manifest_digest, *([image.index_digest] if image.index_digest else [])}
    if wanted not in accepted:
        raise ChecksumMismatch(
            f"image {image.reference}: checksum {wanted} does not match the image digest "
            + " or ".join(sorted(accepted))
        )


def fetch_blob(
    client: RegistryClient,
    ref: ImageReference,
    descriptor: Descriptor,
    dest: Path,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream a blob to ``dest`` in chunks, hashing as it arrives; on any mismatch ``dest`` is removed."""
    algorithm = descriptor.digest.split(":", 1)[0]
    hasher = hashlib.new(algorithm)
    received = 0
    response = client.request(
        "GET", f"/v2/{ref.repository}/blobs/{descriptor.digest}", repository=ref.repository, stream=True
    )
    try:
        if response.status_code == 404:
            response.read()
            raise BlobUnknown(f"blob {descriptor.digest} of {ref} not found in registry ({_error_codes(response)})")
        if response.status_code != 200:
            response.read()
            raise RegistryProtocolError(
                f"GET blob {descriptor.digest} of {ref}: {response.status_code} ({_error_codes(response)})"
            )
        with dest.open("wb") as out:
            for chunk in _iter_raw(client, response):
                received += len(chunk)
                if received > descriptor.size:
                    raise DigestMismatch(
                        f"blob {descriptor.digest} of {ref}: more than the {descriptor.size} "
                        "bytes its descriptor declares"
                    )
                hasher.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        if received < descriptor.size:
            raise RegistryServerError(
                f"blob {descriptor.digest} of {ref}: transfer ended after {received} of {descriptor.size} bytes"
            )
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != descriptor.digest:
            raise DigestMismatch(f"blob of {ref}: expected digest {descriptor.digest}, received content has {actual}")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        response.close()


def _iter_raw(client: RegistryClient, response: httpx.Response) -> Iterator[bytes]:
    """Bytes exactly as sent (no content-decoding: the digest covers the stored bytes), transport errors mapped."""
    try:
        yield from response.iter_raw(CHUNK_SIZE)
    except httpx.TransportError as exc:
        raise client._transport_error(exc) from exc


# --- pushing (the dev stack and tests publish images with the same client) ------------------------------------


def push_blob(client: RegistryClient, repository: str, digest: str, source: bytes | Path) -> None:
    """Upload one blob (monolithic POST+PUT) unless the registry already has it."""
    actions = ("pull", "push")
    head = client.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository=repository, actions=actions)
    if head.status_code == 200:
        return
    start = client.request("POST", f"/v2/{repository}/blobs/uploads/", repository=repository, actions=actions)
    if start.status_code != 202 or "location" not in start.headers:
        raise RegistryProtocolError(f"starting an upload to {repository}: {start.status_code} ({_error_codes(start)})")
    location = start.headers["location"]
    # Append the digest by hand: httpx's params= would replace the upload URL's own query (its _state).
    location += ("&" if "?" in location else "?") + f"digest={digest}"
    put = client.request(
        "PUT",
        location,
        repository=repository,
        actions=actions,
        headers={"Content-Type": "application/octet-stream"},
        content=source,
    )
    if put.status_code != 201:
        raise RegistryProtocolError(f"uploading blob {digest} to {repository}: {put.status_code} ({_error_codes(put)})")


def push_manifest(client: RegistryClient, repository: str, reference: str, raw: bytes, media_type: str) -> str:
    """PUT a manifest or index under a tag (or its digest); returns the digest of ``raw``."""
    response = client.request(
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        repository=repository,
        actions=("pull", "push"),
        headers={"Content-Type": media_type},
        content=raw,
    )
    if response.status_code != 201:
        raise RegistryProtocolError(
            f"pushing manifest {repository}:{reference}: {response.status_code} ({_error_codes(response)})"
        )
    return digest_of(raw)
