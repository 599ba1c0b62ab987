"""The OCI distribution client against a real docker-registry: references, auth, TLS, digests, platforms."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import pytest

from devstack.net import free_port
from devstack.registry import (
    PushedImage,
    RegistryServer,
    make_layer,
    push_image,
    push_index,
    write_auth_config,
)
from models.host import HostErrorType
from node_worker.registry import (
    BlobUnknown,
    ChecksumMismatch,
    Descriptor,
    DigestMismatch,
    ImageReference,
    ImageReferenceInvalid,
    ManifestUnknown,
    RegistryAuthError,
    RegistryTLSError,
    RegistryUnreachable,
    UnsupportedImage,
    digest_of,
    fetch_blob,
    host_platform,
    load_credentials,
    open_client,
    parse_challenge,
    parse_image_reference,
    plan_access,
    resolve_image,
    verify_checksum,
)
from tests.node_worker.registry_env import (
    USERS,
    basic_registry,
    plain_registry,
    tls_registry,
    token_registry,
    wrong_ca,
)

__all__ = ["basic_registry", "plain_registry", "tls_registry", "token_registry"]  # fixtures used below

HEX = "ab" * 32


# --- references ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/kubeos/os:1.0.2", ImageReference("127.0.0.1:5000", "kubeos/os", "1.0.2", None)),
        ("registry.example.com/os@sha256:" + HEX, ImageReference("registry.example.com", "os", None, f"sha256:{HEX}")),
        ("localhost/os:v1@sha256:" + HEX.upper(), ImageReference("localhost", "os", "v1", f"sha256:{HEX}")),
        ("kubeos/os:1.0", ImageReference("docker.io", "kubeos/os", "1.0", None)),
        ("busybox", ImageReference("docker.io", "library/busybox", "latest", None)),
        ("host:5000/a/b/c", ImageReference("host:5000", "a/b/c", "latest", None)),
    ],
)
def test_references_are_split_like_docker(text: str, expected: ImageReference) -> None:
    assert parse_image_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" kubeos/os:1", "whitespace"),
        ("Kubeos/os:1", "lower-case"),
        ("kubeos/os:-bad", "tag"),
        ("kubeos/os@sha256:1234", "digest"),
        ("host:5000/../os:1", "repository component"),
        ("-bad-.com:5000/os:1", "registry host"),
    ],
)
def test_invalid_references_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ImageReferenceInvalid, match="Invalid image name") as info:
        parse_image_reference(text)
    assert reason in str(info.value)
    assert info.value.kind == HostErrorType.INVALID_INPUT and not info.value.retryable


# --- transport policy and credentials -----------------------------------------------------------------------


def test_transport_policy(tmp_path: Path) -> None:
    none = tmp_path / "absent.json"
    assert plan_access(parse_image_reference("127.0.0.1:5000/os:1"), auth_config=none).scheme == "http"
    assert plan_access(parse_image_reference("localhost:5000/os:1"), auth_config=none).scheme == "http"
    remote = parse_image_reference("registry.example.com/os:1")
    assert plan_access(remote, auth_config=none).scheme == "https"
    assert plan_access(remote, flag_safe=True, auth_config=none).scheme == "http"
    ctx = ssl.create_default_context()
    tls = plan_access(parse_image_reference("127.0.0.1:5000/os:1"), tls=ctx, auth_config=none)
    assert tls.scheme == "https" and tls.verify is ctx


def test_credentials_from_docker_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:pa:ss").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://reg.example.com:5000/v2/": {"auth": auth},
                    "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
                }
            }
        )
    )
    assert load_credentials(config, "reg.example.com:5000") == ("bob", "pa:ss")
    assert load_credentials(config, "docker.io") == ("hub", "pw")
    assert load_credentials(config, "other.example.com") is None
    assert load_credentials(tmp_path / "missing.json", "reg.example.com:5000") is None
    config.write_text('{"auths": {"reg": {"auth": "not base64!"}}}')
    with pytest.raises(RegistryAuthError, match="not base64"):
        load_credentials(config, "reg")
    config.write_text("{broken")
    with pytest.raises(RegistryAuthError, match="cannot read registry credentials"):
        load_credentials(config, "reg")


def test_bearer_challenge_is_parsed() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry",
        "scope": "repository:a/b:pull,push",
    }


# --- against a real registry ---------------------------------------------------------------------------------


def _push_small(server: RegistryServer, work: Path, repository: str, tag: str | None, text: str) -> PushedImage:
    tree = work / f"tree-{text}"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc/os-release").write_text(f'PRETTY_NAME="{text}"\n')
    with server.client() as client:
        return push_image(client, repository, tag, [make_layer(tree, work / "blobs")])


def test_pull_verifies_manifest_and_blobs(plain_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = _push_small(plain_registry, tmp_path, "kubeos/small", "1", "Small 1")
    ref = parse_image_reference(pushed.reference)
    with open_client(ref, auth_config=None) as client:
        image = resolve_image(client, ref)
        assert image.manifest_digest == pushed.digest and image.index_digest is None
        dest = tmp_path / "layer"
        fetch_blob(client, ref, image.layers[0], dest)
        assert digest_of(dest.read_bytes()) == image.layers[0].digest
        # A descriptor declaring fewer bytes than the blob has: refused while streaming, partial file removed.
        short = Descriptor(image.layers[0].media_type, image.layers[0].digest, image.layers[0].size - 1)
        with pytest.raises(DigestMismatch, match="more than"):
            fetch_blob(client, ref, short, dest)
        assert not dest.exists()
        with pytest.raises(BlobUnknown, match="not found"):
            fetch_blob(client, ref, Descriptor("x", f"sha256:{HEX}", 3), dest)


def test_tampered_blob_in_the_registry_is_detected(plain_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = _push_small(plain_registry, tmp_path, "kubeos/tampered", "1", "Tampered")
    ref = parse_image_reference(pushed.reference)
    with open_client(ref, auth_config=None) as client:
        layer = resolve_image(client, ref).layers[0]
        hexdigest = layer.digest.split(":")[1]
        stored = plain_registry.directory / f"storage/docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
        data = bytearray(stored.read_bytes())
        data[-1] ^= 0xFF  # same size, other content
        stored.write_bytes(bytes(data))
        with pytest.raises(DigestMismatch, match=f"expected digest {layer.digest}") as info:
            fetch_blob(client, ref, layer, tmp_path / "blob")
        assert info.value.kind == HostErrorType.CHECKSUM_MISMATCH and not info.value.retryable
        assert not (tmp_path / "blob").exists()


def test_missing_tag_is_manifest_unknown(plain_registry: RegistryServer, tmp_path: Path) -> None:
    _push_small(plain_registry, tmp_path, "kubeos/tags", "present", "Tags")
    ref = parse_image_reference(f"{plain_registry.host}/kubeos/tags:absent")
    with open_client(ref, auth_config=None) as client, pytest.raises(ManifestUnknown) as info:
        resolve_image(client, ref)
    assert "manifest unknown" in str(info.value) and "kubeos/tags:absent" in str(info.value)
    assert info.value.kind == HostErrorType.CONTAINER_IMAGE and not info.value.retryable


def test_closed_port_is_unreachable_and_retryable() -> None:
    ref = parse_image_reference(f"127.0.0.1:{free_port()}/kubeos/os:1")
    with open_client(ref, auth_config=None) as client, pytest.raises(RegistryUnreachable, match="cannot reach") as info:
        resolve_image(client, ref)
    assert info.value.retryable and info.value.kind == HostErrorType.DOWNLOAD_RETRY


def test_tls_with_the_right_ca_and_refused_with_a_wrong_one(tls_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = _push_small(tls_registry, tmp_path, "kubeos/tls", "1", "TLS")
    ref = parse_image_reference(pushed.reference)
    assert tls_registry.ca_file is not None
    good = ssl.create_default_context(cafile=str(tls_registry.ca_file))
    with open_client(ref, tls=good, auth_config=None) as client:
        assert resolve_image(client, ref).manifest_digest == pushed.digest
    bad = ssl.create_default_context(cafile=str(wrong_ca(tmp_path / "other")))
    with open_client(ref, tls=bad, auth_config=None) as client, pytest.raises(RegistryTLSError) as info:
        resolve_image(client, ref)
    assert "certificate verify failed" in str(info.value)
    assert info.value.kind == HostErrorType.CERTIFICATE and not info.value.retryable


def test_basic_auth_from_the_docker_config(basic_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = _push_small(basic_registry, tmp_path, "kubeos/basic", "1", "Basic")
    ref = parse_image_reference(pushed.reference)
    assert basic_registry.ca_file is not None
    ctx = ssl.create_default_context(cafile=str(basic_registry.ca_file))
    user, password = next(iter(USERS.items()))
    config = write_auth_config(tmp_path / "config.json", basic_registry.host, user, password)
    with open_client(ref, tls=ctx, auth_config=config) as client:
        assert resolve_image(client, ref).manifest_digest == pushed.digest
    with open_client(ref, tls=ctx, auth_config=None) as client, pytest.raises(RegistryAuthError, match="requires"):
        resolve_image(client, ref)
    wrong = write_auth_config(tmp_path / "wrong.json", basic_registry.host, user, "nope")
    with open_client(ref, tls=ctx, auth_config=wrong) as client, pytest.raises(RegistryAuthError, match="refused"):
        resolve_image(client, ref)


def test_bearer_token_auth(token_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = _push_small(token_registry, tmp_path, "kubeos/token", "1", "Token")
    ref = parse_image_reference(pushed.reference)
    assert token_registry.token_server is not None
    issued = token_registry.token_server.issued
    user, password = next(iter(USERS.items()))
    config = write_auth_config(tmp_path / "config.json", token_registry.host, user, password)
    with open_client(ref, auth_config=config) as client:
        image = resolve_image(client, ref)
        fetch_blob(client, ref, image.layers[0], tmp_path / "blob")  # same scope: the cached token is reused
    assert image.manifest_digest == pushed.digest
    assert token_registry.token_server.issued == issued + 1
    with open_client(ref, auth_config=None) as client, pytest.raises(RegistryAuthError, match="token service") as info:
        resolve_image(client, ref)
    assert "no credentials configured" in str(info.value) and not info.value.retryable


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_manifest_list_resolves_to_the_host_architecture(
    plain_registry: RegistryServer, tmp_path: Path, docker: bool
) -> None:
    host_arch = host_platform()[0]
    other_arch = "arm64" if host_arch != "arm64" else "amd64"
    repo = f"kubeos/multi-{int(docker)}"
    mine = _push_small(plain_registry, tmp_path, repo, None, f"for {host_arch}")
    other = _push_small(plain_registry, tmp_path, repo, None, f"for {other_arch}")
    with plain_registry.client() as client:
        index = push_index(client, repo, "1", [(other, other_arch), (mine, host_arch)], docker=docker)
    ref = parse_image_reference(index.reference)
    with open_client(ref, auth_config=None) as client:
        image = resolve_image(client, ref)
        assert (image.index_digest, image.manifest_digest, image.digest) == (index.digest, mine.digest, index.digest)
        assert resolve_image(client, ref, architecture=other_arch).manifest_digest == other.digest
        with pytest.raises(UnsupportedImage, match=f"no linux/s390x manifest .*{host_arch}"):
            resolve_image(client, ref, architecture="s390x")
    # checksum: the index digest (docker's repo digest) and the platform manifest digest are both accepted
    verify_checksum(image, index.digest)
    verify_checksum(image, mine.digest.split(":")[1].upper())
    verify_checksum(image, "")
    with pytest.raises(ChecksumMismatch) as info:
        verify_checksum(image, other.digest)
    assert other.digest in str(info.value) and index.digest in str(info.value) and mine.digest in str(info.value)
