"""Staging a disk image into the inactive slot: verified writes, refusals, resumed transfers (real HTTP(S))."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.image_server import Fault, ImageServer
from devstack.pki import CertificateAuthority
from models.host import HostErrorType, StageProgress
from node_worker import http_source
from node_worker.errors import HostError
from node_worker.http_source import MAX_FAILURES_WITHOUT_PROGRESS
from node_worker.images import build_os_image
from node_worker.osrelease import OsReleaseUnreadable, read_slot_os_release
from tests.node_worker.conftest import (
    CLIENT_CERT,
    CLIENT_KEY,
    NEW,
    SLOT_SIZE,
    Image,
    Pki,
    SimHost,
    disk_source,
)

MIB = 1024 * 1024


def _grub_bytes(host: SimHost) -> bytes:
    return host.paths.grubenv.read_bytes()


def test_good_https_image_is_staged_and_verified(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    source = disk_source(https_server.url(new_image.name), new_image)
    grub_before = _grub_bytes(host)

    pre = host.agent.preflight(source)
    assert pre.target_slot == "B" and pre.status.booted_slot == "A" and not pre.already_staged
    out = host.agent.stage(source)

    assert (out.slot, out.checksum, out.size, out.reused) == (
        "B",
        new_image.sha256,
        new_image.path.stat().st_size,
        False,
    )
    assert out.os_release is not None and out.os_release.pretty_name == NEW
    slot_b = host.agent.slot("B")
    assert slot_b.hash_region(out.size) == new_image.sha256
    assert _grub_bytes(host) == grub_before  # staging never touches the boot entries
    status = host.agent.status()
    assert status.slots["B"].os_release is not None and status.slots["B"].os_release.version_id == "1.0.1"
    assert status.slots["A"].os_release is not None and status.slots["A"].os_release.pretty_name == "KubeOS 1.0.0"


def test_already_staged_image_is_not_fetched_again(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    source = disk_source(https_server.url(new_image.name), new_image)
    host.agent.stage(source)
    assert host.agent.preflight(source).already_staged
    gets = len(https_server.gets(new_image.name))

    again = host.agent.stage(source)

    assert again.reused and again.checksum == new_image.sha256
    assert len(https_server.gets(new_image.name)) == gets


def test_changed_slot_is_fetched_again(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    """The stamp alone is not trusted: a byte changed in the slot since makes the stage download again."""
    source = disk_source(https_server.url(new_image.name), new_image)
    host.agent.stage(source)
    slot = host.agent.slot("B")
    with open(slot.path, "r+b") as f:
        f.seek(slot.offset + 8 * MIB)
        f.write(b"\x5a")
    gets = len(https_server.gets(new_image.name))

    out = host.agent.stage(source)

    assert not out.reused and len(https_server.gets(new_image.name)) == gets + 1
    assert slot.hash_region(out.size) == new_image.sha256


def test_wrong_checksum_invalidates_the_slot_and_leaves_boot_entries(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    wrong = "0" * 64
    source = disk_source(https_server.url(new_image.name), new_image, checksum=wrong)
    grub_before = _grub_bytes(host)

    with pytest.raises(HostError) as err:
        host.agent.stage(source)

    assert err.value.kind == HostErrorType.CHECKSUM_MISMATCH and not err.value.retryable
    assert str(err.value) == f"Checksum {new_image.sha256} mismatch to {wrong}"
    assert _grub_bytes(host) == grub_before
    with pytest.raises(OsReleaseUnreadable):
        read_slot_os_release(host.agent.slot("B"))
    slot = host.agent.slot("B")
    assert next(slot.read_chunks(64 * 1024)) == bytes(64 * 1024)  # signatures wiped
    assert host.agent.status().slots["B"].staged_checksum == ""
    # and the slot is not bootable through our own trial boot either
    with pytest.raises(HostError) as trial:
        host.agent.trial_boot("B", NEW, wrong)
    assert trial.value.kind == HostErrorType.SLOT_NOT_VERIFIED
    assert "Checksum" in host.node_log()


def test_404_fails_without_retry_and_without_touching_the_slot(host: SimHost, https_server: ImageServer) -> None:
    url = https_server.url("missing.img")
    source = disk_source(url, Image(https_server.root / "missing.img", "a" * 64, NEW))
    before = host.slot_digest("B")

    with pytest.raises(HostError) as err:
        host.agent.stage(source)

    assert err.value.kind == HostErrorType.DOWNLOAD_FAILED and not err.value.retryable
    assert str(err.value) == f"Failed to download upgrade image from {url}, status: 404"
    assert host.slot_digest("B") == before


def test_5xx_is_retryable(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    https_server.faults[new_image.name] = Fault(status=503)
    with pytest.raises(HostError) as err:
        host.agent.stage(disk_source(https_server.url(new_image.name), new_image))
    assert err.value.kind == HostErrorType.DOWNLOAD_RETRY and err.value.retryable
    assert "status: 503" in str(err.value)


def test_http_without_flagsafe_is_refused_and_logged(host: SimHost, http_server: ImageServer, new_image: Image) -> None:
    source = disk_source(http_server.url(new_image.name), new_image, flagSafe=False)
    for operation in (host.agent.preflight, host.agent.stage):
        with pytest.raises(HostError) as err:
            operation(source)
        assert err.value.kind == HostErrorType.UNSAFE_ADDRESS and not err.value.retryable
    assert "unsafe address" in host.node_log()
    assert http_server.gets(new_image.name) == []


def test_http_with_flagsafe_is_staged(host: SimHost, http_server: ImageServer, new_image: Image) -> None:
    out = host.agent.stage(disk_source(http_server.url(new_image.name), new_image, flagSafe=True))
    assert out.checksum == new_image.sha256


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/update.img", "file:///etc/passwd", "127.0.0.1/update.img"])
def test_other_schemes_are_refused(host: SimHost, new_image: Image, url: str) -> None:
    with pytest.raises(HostError) as err:
        host.agent.preflight(disk_source(url, new_image, flagSafe=True))
    assert err.value.kind == HostErrorType.UNSAFE_ADDRESS


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("cacert", "../certs/image-ca.crt"),
        ("cacert", ".."),
        ("cacert", "/etc/ssl/certs/ca-certificates.crt"),
        ("cacert", ""),
        ("clientcert", "../client.crt"),
        ("clientkey", "sub/client.key"),
    ],
)
def test_certificate_names_must_be_plain_file_names(
    host: SimHost, https_server: ImageServer, new_image: Image, field: str, name: str
) -> None:
    fields = {"mtls": True, "clientcert": CLIENT_CERT, "clientkey": CLIENT_KEY, field: name}
    source = disk_source(https_server.url(new_image.name), new_image, **fields)
    with pytest.raises(HostError) as err:
        host.agent.preflight(source)
    assert err.value.kind == HostErrorType.CERTIFICATE and not err.value.retryable
    assert field in str(err.value)


def test_missing_certificate_is_refused(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    with pytest.raises(HostError, match=r"Certificate does not exist: nope\.crt"):
        host.agent.preflight(disk_source(https_server.url(new_image.name), new_image, cacert="nope.crt"))


def test_expired_ca_is_refused(host: SimHost, https_server: ImageServer, new_image: Image, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    expired = CertificateAuthority(
        tmp_path, "old-ca", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    shutil.copy(expired.cert_path, host.paths.certs / "old-ca.crt")
    with pytest.raises(HostError, match="expired") as err:
        host.agent.preflight(disk_source(https_server.url(new_image.name), new_image, cacert="old-ca.crt"))
    assert err.value.kind == HostErrorType.CERTIFICATE


def test_expired_client_certificate_is_refused(
    host: SimHost, https_server: ImageServer, new_image: Image, pki: Pki, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    old = pki.ca.issue_client("old-client", not_before=now - timedelta(days=30), not_after=now - timedelta(seconds=1))
    shutil.copy(old.cert, host.paths.certs / "old-client.crt")
    shutil.copy(old.key, host.paths.certs / "old-client.key")
    source = disk_source(
        https_server.url(new_image.name), new_image, mtls=True, clientcert="old-client.crt", clientkey="old-client.key"
    )
    with pytest.raises(HostError, match=r"clientcert: .*expired") as err:
        host.agent.preflight(source)
    assert err.value.kind == HostErrorType.CERTIFICATE


def test_not_yet_valid_certificate_is_refused(
    host: SimHost, https_server: ImageServer, new_image: Image, pki: Pki, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    future = CertificateAuthority(
        tmp_path, "future-ca", not_before=now + timedelta(days=1), not_after=now + timedelta(days=30)
    )
    shutil.copy(future.cert_path, host.paths.certs / "future-ca.crt")
    with pytest.raises(HostError, match="not valid before"):
        host.agent.preflight(disk_source(https_server.url(new_image.name), new_image, cacert="future-ca.crt"))


def test_client_key_not_matching_certificate_is_refused(
    host: SimHost, https_server: ImageServer, new_image: Image, pki: Pki
) -> None:
    other = pki.ca.issue_client("someone-else")
    shutil.copy(other.key, host.paths.certs / "other.key")
    source = disk_source(
        https_server.url(new_image.name), new_image, mtls=True, clientcert=CLIENT_CERT, clientkey="other.key"
    )
    with pytest.raises(HostError, match="does not match the client certificate") as err:
        host.agent.preflight(source)
    assert err.value.kind == HostErrorType.CERTIFICATE


def test_server_certificate_from_another_ca_is_refused(
    host: SimHost, https_server: ImageServer, new_image: Image, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path, "stranger-ca")
    shutil.copy(stranger.cert_path, host.paths.certs / "stranger.crt")
    with pytest.raises(HostError) as err:
        host.agent.stage(disk_source(https_server.url(new_image.name), new_image, cacert="stranger.crt"))
    assert err.value.kind == HostErrorType.CERTIFICATE and "TLS verification" in str(err.value)


def test_image_larger_than_the_slot_is_refused_before_writing(
    host: SimHost, https_server: ImageServer, big_image: Image
) -> None:
    before = host.slot_digest("B")
    with pytest.raises(HostError) as err:
        host.agent.stage(disk_source(https_server.url(big_image.name), big_image))
    assert err.value.kind == HostErrorType.IMAGE_TOO_LARGE and not err.value.retryable
    assert str(SLOT_SIZE) in str(err.value)
    assert host.slot_digest("B") == before  # not a byte written


def test_unannounced_image_larger_than_the_slot_stops_at_the_slot_end(
    host: SimHost, https_server: ImageServer, big_image: Image
) -> None:
    """Without Content-Length the writer stops at the slot's end, and the partial image is wiped."""
    https_server.faults[big_image.name] = Fault(chunked=True)
    with pytest.raises(HostError) as err:
        host.agent.stage(disk_source(https_server.url(big_image.name), big_image))
    assert err.value.kind == HostErrorType.IMAGE_TOO_LARGE
    with pytest.raises(OsReleaseUnreadable):
        read_slot_os_release(host.agent.slot("B"))
    # the disk around the slot is intact: slot A still boots
    assert read_slot_os_release(host.agent.slot("A")).pretty_name == "KubeOS 1.0.0"


def test_cut_transfer_resumes_with_range_and_is_verified(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    cut = 5 * MIB + 12345
    https_server.faults[new_image.name] = Fault(cut_after=[cut])
    out = host.agent.stage(disk_source(https_server.url(new_image.name), new_image))

    assert out.checksum == new_image.sha256
    gets = https_server.gets(new_image.name)
    assert len(gets) == 2
    # the bytes written before the cut (whole 1 MiB chunks; the partial one is fetched again)
    assert gets[1].headers.get("range") == f"bytes={5 * MIB}-"
    assert gets[1].headers.get("if-range")  # the validator guards the splice
    assert "resuming at byte" in host.node_log()


def test_cut_transfer_without_range_support_starts_over(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    https_server.faults[new_image.name] = Fault(cut_after=[3 * MIB], ignore_ranges=True)
    out = host.agent.stage(disk_source(https_server.url(new_image.name), new_image))
    assert out.checksum == new_image.sha256
    assert [g.headers.get("range") for g in https_server.gets(new_image.name)] == [None, None]


def test_retried_attempt_resumes_from_the_last_heartbeat(
    host: SimHost, https_server: ImageServer, new_image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that gives up (retryable) leaves its progress; the next attempt re-hashes that prefix from the
    slot and asks only for the rest."""
    monkeypatch.setattr(http_source, "RETRY_BASE_DELAY", 0.01)
    https_server.faults[new_image.name] = Fault(cut_after=[4 * MIB] + [0] * MAX_FAILURES_WITHOUT_PROGRESS)
    beats: list[StageProgress] = []
    source = disk_source(https_server.url(new_image.name), new_image)
    with pytest.raises(HostError) as err:
        host.agent.stage(source, beats.append)
    assert err.value.kind == HostErrorType.DOWNLOAD_RETRY and err.value.retryable
    last = beats[-1]
    assert last.written == 4 * MIB

    https_server.faults.clear()
    requests_before = len(https_server.gets(new_image.name))
    out = host.agent.stage(source, beats.append, resume=last)

    assert out.checksum == new_image.sha256 and out.resumed_at == 4 * MIB
    assert https_server.gets(new_image.name)[requests_before].headers.get("range") == f"bytes={4 * MIB}-"
    assert any(b.phase == "rehash-prefix" for b in beats)


def test_resume_from_another_boot_starts_over(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    """Page cache does not survive a crash: progress recorded in an earlier boot is not trusted."""
    source = disk_source(https_server.url(new_image.name), new_image)
    stale = StageProgress(
        phase="download",
        slot="B",
        checksum=new_image.sha256,
        source=source.imageurl,
        done=MIB,
        total=None,
        written=MIB,
        boot_id="an-earlier-boot",
    )
    out = host.agent.stage(source, resume=stale)
    assert out.resumed_at == 0 and out.checksum == new_image.sha256
    assert https_server.gets(new_image.name)[0].headers.get("range") is None


def test_changed_file_between_attempts_is_fetched_whole(
    host: SimHost, https_server: ImageServer, new_image: Image, image_root: Path
) -> None:
    """If-Range: when the file changed since the first response, the server sends all of it and we start over."""
    name = "changing.img"
    shutil.copy(new_image.path, image_root / name)
    https_server.faults[name] = Fault(cut_after=[2 * MIB])
    source = disk_source(https_server.url(name), new_image)
    # change the file's identity (its ETag) after the first response, before the resumed request
    original_etag = https_server.etag

    calls = {"n": 0}

    def etag_changing(path: Path) -> str:
        calls["n"] += 1
        return original_etag(path) if calls["n"] == 1 else '"changed"'

    https_server.etag = etag_changing  # type: ignore[method-assign]
    out = host.agent.stage(source)
    assert out.checksum == new_image.sha256
    gets = https_server.gets(name)
    assert gets[1].headers.get("range") == f"bytes={2 * MIB}-"  # asked for the rest, got the whole file
    assert "starting over" in host.node_log()


def test_memory_stays_flat_with_image_size(host: SimHost, https_server: ImageServer, image_root: Path) -> None:
    """Python allocations while staging stay a few MiB whatever the image size (prints the figure)."""
    path = image_root / "flat.img"
    image = Image(path, build_os_image(path, NEW, 22 * MIB), NEW)
    tracemalloc.start()
    try:
        host.agent.stage(disk_source(https_server.url(path.name), image))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"staging a {path.stat().st_size // MIB} MiB image: peak Python allocations {peak / MIB:.1f} MiB")
    assert peak < 8 * MIB


def test_staging_holds_the_host_lock(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    with host.agent.exclusive("a test"), pytest.raises(HostError) as err:
        host.agent.stage(disk_source(https_server.url(new_image.name), new_image))
    assert err.value.kind == HostErrorType.HOST_BUSY and err.value.retryable


def test_staging_space_is_checked(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    agent = type(host.agent)(host.config.model_copy(update={"min_staging_free_bytes": 2**62}))
    with pytest.raises(HostError, match="Space is not enough") as err:
        agent.preflight(disk_source(https_server.url(new_image.name), new_image))
    assert err.value.kind == HostErrorType.NO_SPACE


def test_staging_is_refused_when_grubenv_is_not_a_grub_environment(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    os.truncate(host.paths.grubenv, 0)
    with pytest.raises(HostError) as err:
        host.agent.preflight(disk_source(https_server.url(new_image.name), new_image))
    assert err.value.kind == HostErrorType.HOST_MISCONFIGURED


def test_bad_checksum_format_is_refused(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    with pytest.raises(HostError, match="64 hex digits") as err:
        host.agent.preflight(disk_source(https_server.url(new_image.name), new_image, checksum="abc"))
    assert err.value.kind == HostErrorType.INVALID_INPUT


def test_container_image_without_dockerimage_is_refused(host: SimHost) -> None:
    from models.host import ImageSource

    with pytest.raises(HostError, match="dockerimage") as err:
        host.agent.preflight(ImageSource(imagetype="docker", osversion=NEW))
    assert err.value.kind == HostErrorType.INVALID_INPUT
