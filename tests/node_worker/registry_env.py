"""Real registries for the container-image tests: Debian's docker-registry on 127.0.0.1, stopped after the module.

Import the fixtures into a test module (``from tests.node_worker.registry_env import plain_registry, ...``);
each module gets its own registries.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.pki import CertificateAuthority
from devstack.registry import RegistryServer

USERS = {"alice": "wonderland"}

if shutil.which("docker-registry") is None:  # the Makefile installs it; fail loudly rather than skip
    raise RuntimeError("docker-registry is not installed (Debian package docker-registry; `make deps`)")


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("plain-registry")) as server:
        yield server


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("tls-registry"), tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """htpasswd (Basic) auth behind TLS, as basic credentials should be."""
    with RegistryServer(tmp_path_factory.mktemp("basic-registry"), tls=True, auth="htpasswd", users=USERS) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Token (Bearer) auth with our own token issuer."""
    with RegistryServer(tmp_path_factory.mktemp("token-registry"), auth="token", users=USERS) as server:
        yield server


def certs_dir_with(directory: Path, ca_file: Path | None, name: str = "registry-ca.crt") -> Path:
    """A certificates directory holding ``ca_file`` as ``name`` (what ``spec.cacert`` names)."""
    directory.mkdir(parents=True, exist_ok=True)
    if ca_file is not None:
        shutil.copyfile(ca_file, directory / name)
    return directory


def wrong_ca(directory: Path) -> Path:
    """A CA that signed nothing the registry serves."""
    return CertificateAuthority(directory, "unrelated-ca").cert_path
