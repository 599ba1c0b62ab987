"""Container image → root filesystem → ext4 image, pulled from a real docker-registry and read back with debugfs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from devstack.net import free_port
from devstack.registry import (
    LayerBlob,
    PushedImage,
    RegistryServer,
    layer_from_tar,
    push_image,
    push_index,
    push_kubeos_image,
    write_auth_config,
    write_kubeos_rootfs,
    write_tar,
)
from models.host import HostErrorType, ImageSource
from node_worker.errors import HostError
from node_worker.oci_rootfs import (
    WORKDIR_NAME,
    BuiltImage,
    ImageLayoutError,
    SlotTooSmall,
    StagingSpaceLow,
    UnsafeLayerEntry,
    build_rootfs_image,
)
from node_worker.registry import (
    ChecksumMismatch,
    ManifestUnknown,
    RegistryAuthError,
    RegistryServerError,
    RegistryTLSError,
    RegistryUnreachable,
    UnsupportedImage,
    host_platform,
)
from tests.node_worker.registry_env import (
    USERS,
    basic_registry,
    certs_dir_with,
    plain_registry,
    tls_registry,
    token_registry,
    wrong_ca,
)

__all__ = ["basic_registry", "plain_registry", "tls_registry", "token_registry"]  # fixtures used below

MIB = 1024 * 1024
SLOT = 64 * MIB

# (kind, name, data-or-target, mode); kinds: file, dir, symlink, hardlink
Entry = tuple[str, str, str | bytes, int]


def debugfs(image: Path, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def pretty_name(image: Path) -> str:
    for line in debugfs(image, "cat /etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    raise AssertionError(f"no PRETTY_NAME in {image}")


def tar_layer(work: Path, entries: Sequence[Entry]) -> LayerBlob:
    """A layer from hand-made tar entries: what a directory cannot express (whiteouts through symlinks,
    paths under a symlinked directory, hostile names)."""
    plain = work / f"{uuid.uuid4().hex}.tar"
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as archive:
        for kind, name, value, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            data = None
            if kind == "file":
                data = value if isinstance(value, bytes) else value.encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(value)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    blob = layer_from_tar(plain, work / "blobs")
    plain.unlink()
    return blob


def os_release(name: str) -> Entry:
    return ("file", "etc/os-release", f'NAME="KubeOS"\nPRETTY_NAME="{name}"\n', 0o644)


def push(server: RegistryServer, repo: str, layers: Sequence[LayerBlob], tag: str | None = "1") -> PushedImage:
    with server.client() as client:
        return push_image(client, repo, tag, layers)


def build(
    image: str, staging: Path, *, certs: Path | None = None, source: ImageSource | None = None, **kwargs: object
) -> BuiltImage:
    return build_rootfs_image(
        source or ImageSource(imagetype="docker", dockerimage=image),
        staging_dir=staging,
        slot_size=kwargs.pop("slot_size", SLOT),  # type: ignore[arg-type]
        certs_dir=certs or staging / "no-certs",
        auth_config=kwargs.pop("auth_config", None),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


# --- both image layouts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["os.tar", "rootfs"])
def test_kubeos_image_becomes_a_clean_ext4_image(plain_registry: RegistryServer, tmp_path: Path, layout: str) -> None:
    with plain_registry.client() as client:
        pushed = push_kubeos_image(client, "KubeOS 1.0.2", tmp_path / "work", layout=layout)  # type: ignore[arg-type]
    phases: list[tuple[str, int, int]] = []
    fs_uuid = str(uuid.uuid4())
    source = ImageSource(imagetype="docker", dockerimage=pushed.reference, checksum=pushed.digest.split(":")[1])
    built = build(
        "", tmp_path / "staging", source=source, label="ROOT-B", fs_uuid=fs_uuid, progress=lambda *p: phases.append(p)
    )
    with built:
        assert built.manifest_digest == built.image_digest == pushed.digest
        assert built.os_release.pretty_name == "KubeOS 1.0.2" and built.os_release.version_id == "1.0.2"
        assert pretty_name(built.path) == "KubeOS 1.0.2"
        assert built.size == built.path.stat().st_size == SLOT
        assert built.sha256 == hashlib.sha256(built.path.read_bytes()).hexdigest()
        assert sorted(os.listdir(built.workdir)) == ["rootfs.ext4"]  # layers and tree already gone
        stats = debugfs(built.path, "stats")
        assert "Filesystem volume name:   ROOT-B" in stats and fs_uuid in stats
        assert "Mode:  04755" in debugfs(built.path, "stat /usr/bin/kubeos-version")  # setuid kept
        assert "Type: symlink" in debugfs(built.path, "stat /bin")
        assert "Mode:  01777" in debugfs(built.path, "stat /tmp")
        fsck = subprocess.run(["e2fsck", "-fn", str(built.path)], capture_output=True, text=True, check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not built.workdir.exists()
    seen = {phase for phase, _, _ in phases}
    assert {"resolve", "download", "extract", "mkfs", "hash"} <= seen
    download = [p for p in phases if p[0] == "download"]
    assert download[-1][1] == download[-1][2] > 0


def test_layers_apply_in_order_with_whiteouts_and_links(plain_registry: RegistryServer, tmp_path: Path) -> None:
    lower = tar_layer(
        tmp_path,
        [
            ("dir", "etc", "", 0o755),
            os_release("Lower"),
            ("file", "etc/removed.conf", "gone", 0o644),
            ("dir", "opaque", "", 0o755),
            ("file", "opaque/lower.txt", "lower", 0o644),
            ("dir", "replaced", "", 0o755),
            ("file", "replaced/child", "child", 0o644),
            ("dir", "usr/lib", "", 0o755),
            ("symlink", "lib", "usr/lib", 0o777),
            ("file", "usr/share/zoneinfo/UTC", "TZif", 0o644),
            ("symlink", "etc/localtime", "/usr/share/zoneinfo/UTC", 0o777),
        ],
    )
    upper = tar_layer(
        tmp_path,
        [
            os_release("KubeOS 2.0.0"),
            ("file", "etc/.wh.removed.conf", "", 0o644),
            ("file", "opaque/upper.txt", "upper", 0o644),
            ("file", "opaque/.wh..wh..opq", "", 0o644),  # after a same-layer entry: that one stays
            ("file", "replaced", "now a file", 0o600),
            ("file", "lib/added.so", "through the lib symlink", 0o755),  # merged-usr: lands in usr/lib
            ("file", "usr/bin/a", "same inode", 0o755),
            ("hardlink", "usr/bin/b", "usr/bin/a", 0o755),
        ],
    )
    pushed = push(plain_registry, "kubeos/layered", [lower, upper])
    with build(pushed.reference, tmp_path / "staging") as built:
        img = built.path
        assert pretty_name(img) == "KubeOS 2.0.0"
        assert "File not found" in debugfs(img, "stat /etc/removed.conf")
        listing = debugfs(img, "ls -l /opaque")
        assert "upper.txt" in listing and "lower.txt" not in listing
        assert "now a file" in debugfs(img, "cat /replaced")
        assert "through the lib symlink" in debugfs(img, "cat /usr/lib/added.so")
        assert 'Fast link dest: "/usr/share/zoneinfo/UTC"' in debugfs(img, "stat /etc/localtime")
        a, b = debugfs(img, "stat /usr/bin/a"), debugfs(img, "stat /usr/bin/b")
        assert "Links: 2" in a and a.split()[1] == b.split()[1]  # same inode number


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ("whiteout", "From layers"),  # os.tar hidden by a later layer: the layers are the root filesystem
        ("replace", "From second os.tar"),  # a later os.tar wins
        ("keep", "From os.tar"),  # an unrelated later layer leaves os.tar in place
    ],
)
def test_os_tar_follows_layer_semantics(
    plain_registry: RegistryServer, tmp_path: Path, second: str, expected: str
) -> None:
    def os_tar_layer(name: str) -> LayerBlob:
        tree, holder = tmp_path / f"tree-{name}", tmp_path / f"holder-{name}"
        write_kubeos_rootfs(tree, name)
        holder.mkdir()
        write_tar(tree, holder / "os.tar")
        data = (holder / "os.tar").read_bytes()
        return tar_layer(tmp_path, [("file", "os.tar", data, 0o644)])

    layers = [os_tar_layer("From os.tar")]
    if second == "whiteout":
        layers.append(tar_layer(tmp_path, [("file", ".wh.os.tar", "", 0o644), os_release("From layers")]))
    elif second == "replace":
        layers.append(os_tar_layer("From second os.tar"))
    else:
        layers.append(tar_layer(tmp_path, [("file", "README", "unrelated", 0o644)]))
    pushed = push(plain_registry, f"kubeos/ostar-{second}", layers)
    with build(pushed.reference, tmp_path / "staging") as built:
        assert pretty_name(built.path) == expected == built.os_release.pretty_name


# --- hostile and broken images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("file", "../escape", "x", 0o644)], "contains '..'"),
        ([("file", "etc/../../escape", "x", 0o644)], "contains '..'"),
        ([("file", "/abs-escape", "x", 0o644)], "absolute path"),
        ([("hardlink", "etc/passwd", "../../../etc/passwd", 0o644)], "contains '..'"),
    ],
)
def test_entries_leaving_the_tree_are_refused(
    plain_registry: RegistryServer, tmp_path: Path, entries: list[Entry], reason: str
) -> None:
    pushed = push(
        plain_registry, f"kubeos/hostile-{uuid.uuid4().hex[:8]}", [tar_layer(tmp_path, [os_release("X"), *entries])]
    )
    with pytest.raises(UnsafeLayerEntry, match=reason) as info:
        build(pushed.reference, tmp_path / "staging")
    assert info.value.kind == HostErrorType.INVALID_INPUT and not info.value.retryable
    assert not (tmp_path / "staging" / WORKDIR_NAME).exists()
    assert not (tmp_path / "staging" / "escape").exists() and not (tmp_path / "escape").exists()


def test_symlinks_never_lead_out_of_the_tree(plain_registry: RegistryServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("untouched")
    depth = "../" * len(outside.parts)
    layers = [
        tar_layer(
            tmp_path,
            [
                ("symlink", "abs", str(outside), 0o777),
                ("symlink", "rel", f"{depth}{str(outside).lstrip('/')}", 0o777),
                ("dir", "etc", "", 0o755),
                ("symlink", "etc/os-release", str(victim), 0o777),
            ],
        ),
        tar_layer(
            tmp_path,
            [
                ("file", "abs/pwned", "a", 0o644),
                ("file", "rel/pwned-too", "b", 0o644),
                os_release("Contained"),  # replaces the symlink, never writes through it
            ],
        ),
    ]
    pushed = push(plain_registry, "kubeos/symlinks", layers)
    with build(pushed.reference, tmp_path / "staging") as built:
        assert sorted(os.listdir(outside)) == ["victim"] and victim.read_text() == "untouched"
        inside = str(outside)  # both links resolve inside the image, at the same path
        assert "a" in debugfs(built.path, f"cat {inside}/pwned")
        assert "b" in debugfs(built.path, f"cat {inside}/pwned-too")
        assert pretty_name(built.path) == "Contained"


def test_checksum_mismatch_is_refused_before_downloading(plain_registry: RegistryServer, tmp_path: Path) -> None:
    with plain_registry.client() as client:
        pushed = push_kubeos_image(client, "KubeOS 3.0.0", tmp_path / "work")
    wrong = "0" * 64
    source = ImageSource(imagetype="docker", dockerimage=pushed.reference, checksum=wrong)
    phases: list[str] = []
    with pytest.raises(ChecksumMismatch) as info:
        build("", tmp_path / "staging", source=source, progress=lambda phase, d, t: phases.append(phase))
    assert f"sha256:{wrong}" in str(info.value) and pushed.digest in str(info.value)
    assert info.value.kind == HostErrorType.CHECKSUM_MISMATCH and not info.value.retryable
    assert "download" not in phases and not (tmp_path / "staging" / WORKDIR_NAME).exists()


def test_missing_tag_and_unreachable_registry(plain_registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(ManifestUnknown, match=r"manifest unknown.*kubeos/os:9\.9\.9"):
        build(f"{plain_registry.host}/kubeos/os:9.9.9", tmp_path / "staging")
    with pytest.raises(RegistryUnreachable) as info:
        build(f"127.0.0.1:{free_port()}/kubeos/os:1", tmp_path / "staging")
    assert info.value.retryable


def test_image_that_is_not_a_root_filesystem(plain_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = push(plain_registry, "kubeos/not-an-os", [tar_layer(tmp_path, [("file", "hello.txt", "hi", 0o644)])])
    with pytest.raises(ImageLayoutError, match=r"neither /os\.tar nor a root filesystem"):
        build(pushed.reference, tmp_path / "staging")


def test_unsupported_layer_compression(plain_registry: RegistryServer, tmp_path: Path) -> None:
    layer = dataclasses.replace(
        tar_layer(tmp_path, [os_release("Z")]), media_type="application/vnd.oci.image.layer.v1.tar+zstd"
    )
    pushed = push(plain_registry, "kubeos/zstd", [layer])
    with pytest.raises(UnsupportedImage, match="tar\\+zstd"):
        build(pushed.reference, tmp_path / "staging")


def test_slot_and_staging_space_are_checked(plain_registry: RegistryServer, tmp_path: Path) -> None:
    big = tar_layer(tmp_path, [os_release("Big"), ("file", "big.bin", os.urandom(3 * MIB), 0o644)])
    zeros = tar_layer(tmp_path, [os_release("Zeros"), ("file", "zeros.bin", bytes(3 * MIB), 0o644)])
    pushed, packed = push(plain_registry, "kubeos/big", [big]), push(plain_registry, "kubeos/zeros", [zeros])
    phases: list[str] = []
    # Layers larger than the slot even compressed: refused before downloading.
    with pytest.raises(SlotTooSmall, match="compressed, more than the slot") as info:
        build(pushed.reference, tmp_path / "staging", slot_size=2 * MIB, progress=lambda p, d, t: phases.append(p))
    assert info.value.kind == HostErrorType.IMAGE_TOO_LARGE and "download" not in phases
    # Small compressed, too large unpacked: stopped while unpacking.
    with pytest.raises(SlotTooSmall, match=r"needs more than .* the slot"):
        build(packed.reference, tmp_path / "staging", slot_size=2 * MIB)
    # The tree fits the bytes but not an ext4 filesystem of that size (metadata): mkfs says so, we name it.
    with pytest.raises(SlotTooSmall, match="does not fit an ext4 filesystem"):
        build(pushed.reference, tmp_path / "staging", slot_size=3 * MIB + 256 * 1024)
    with pytest.raises(StagingSpaceLow, match="Space is not enough for downloading") as low:
        build(pushed.reference, tmp_path / "staging", space_margin=1 << 60)
    assert low.value.kind == HostErrorType.NO_SPACE
    assert not (tmp_path / "staging" / WORKDIR_NAME).exists()


# --- transport: TLS, auth, platforms --------------------------------------------------------------------------


def test_tls_registry_with_the_hosts_ca(tls_registry: RegistryServer, tmp_path: Path) -> None:
    with tls_registry.client() as client:
        pushed = push_kubeos_image(client, "KubeOS 1.1.0", tmp_path / "work", layout="rootfs")
    certs = certs_dir_with(tmp_path / "certs", tls_registry.ca_file)
    source = ImageSource(imagetype="docker", dockerimage=pushed.reference, cacert="registry-ca.crt")
    with build("", tmp_path / "staging", source=source, certs=certs) as built:
        assert pretty_name(built.path) == "KubeOS 1.1.0"
    certs_dir_with(tmp_path / "certs", wrong_ca(tmp_path / "other"), "wrong.crt")
    with pytest.raises(RegistryTLSError, match="certificate verify failed"):
        build("", tmp_path / "staging", source=source.model_copy(update={"cacert": "wrong.crt"}), certs=certs)
    with pytest.raises(HostError, match="Certificate does not exist") as info:
        build("", tmp_path / "staging", source=source.model_copy(update={"cacert": "absent.crt"}), certs=certs)
    assert info.value.kind == HostErrorType.CERTIFICATE


@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_authenticated_registries(
    basic_registry: RegistryServer, token_registry: RegistryServer, tmp_path: Path, mode: str
) -> None:
    server = basic_registry if mode == "basic" else token_registry
    with server.client() as client:
        pushed = push_kubeos_image(client, f"KubeOS 1.2.0-{mode}", tmp_path / "work")
    user, password = next(iter(USERS.items()))
    config = write_auth_config(tmp_path / "docker" / "config.json", server.host, user, password)
    certs = certs_dir_with(tmp_path / "certs", server.ca_file)
    source = ImageSource(
        imagetype="docker", dockerimage=pushed.reference, cacert="registry-ca.crt" if server.ca_file else ""
    )
    with build("", tmp_path / "staging", source=source, certs=certs, auth_config=config) as built:
        assert pretty_name(built.path) == f"KubeOS 1.2.0-{mode}"
    with pytest.raises(RegistryAuthError) as info:
        build("", tmp_path / "staging", source=source, certs=certs, auth_config=None)
    assert info.value.kind == HostErrorType.CONTAINER_IMAGE and not info.value.retryable


def test_manifest_list_builds_the_hosts_platform(plain_registry: RegistryServer, tmp_path: Path) -> None:
    host_arch = host_platform()[0]
    other_arch = "arm64" if host_arch != "arm64" else "amd64"
    images = []
    for arch in (other_arch, host_arch):
        tree = tmp_path / f"tree-{arch}"
        write_kubeos_rootfs(tree, f"KubeOS 4.0.0 {arch}")
        with tarfile.open(tmp_path / f"{arch}.tar", "w") as archive:
            for name in sorted(os.listdir(tree)):
                archive.add(tree / name, arcname=name)
        with plain_registry.client() as client:
            layer = layer_from_tar(tmp_path / f"{arch}.tar", tmp_path / "blobs")
            images.append((push_image(client, "kubeos/multi", None, [layer], architecture=arch), arch))
    with plain_registry.client() as client:
        index = push_index(client, "kubeos/multi", "4.0.0", images)
    source = ImageSource(imagetype="docker", dockerimage=index.reference, checksum=index.digest)
    with build("", tmp_path / "staging", source=source) as built:
        assert pretty_name(built.path) == f"KubeOS 4.0.0 {host_arch}"
        assert built.image_digest == index.digest and built.manifest_digest == images[1][0].digest


def test_registry_dying_mid_transfer_is_retryable(tmp_path: Path) -> None:
    """A cut transfer is a network failure (retryable), never a half-built image."""
    plain = tmp_path / "big.tar"
    with tarfile.open(plain, "w") as archive:
        info = tarfile.TarInfo("big.bin")
        info.size = 64 * MIB
        archive.addfile(info, io.BytesIO(os.urandom(info.size)))
    digest = "sha256:" + hashlib.sha256(plain.read_bytes()).hexdigest()
    layer = LayerBlob(plain, digest, plain.stat().st_size, digest, "application/vnd.oci.image.layer.v1.tar")
    with RegistryServer(tmp_path / "registry") as server:
        pushed = push(server, "kubeos/cut", [layer])

        def kill_on_first_chunk(phase: str, done: int, total: int) -> None:
            if phase == "download" and done > 0 and server._process is not None:
                server._process.kill()
                server._process.wait()

        with pytest.raises(HostError) as info_:
            build(pushed.reference, tmp_path / "staging", slot_size=128 * MIB, progress=kill_on_first_chunk)
    assert isinstance(info_.value, RegistryUnreachable | RegistryServerError), info_.value
    assert info_.value.retryable and info_.value.kind == HostErrorType.DOWNLOAD_RETRY
    assert not (tmp_path / "staging" / WORKDIR_NAME).exists()
