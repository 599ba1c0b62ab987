"""Every rule of the OS spec, each with cases that pass and cases that fail naming the field.

A case is (base resource, changes to its spec); a failing case lists exactly the fields its errors must name,
so a case cannot pass because some other field happened to be wrong.
"""

from __future__ import annotations

from typing import Any

import pytest

from models.os_resource import check_os_document
from tests.models.samples import DROP, HEX, OTHER_HEX, resource

DIGEST_IMAGE = f"registry.example.com/kubeos/os@sha256:{HEX}"

VALID: list[Any] = [
    # opstype / imagetype
    pytest.param("disk", {}, id="disk-https"),
    pytest.param("mtls", {}, id="disk-mtls"),
    pytest.param("http", {}, id="disk-http-flagsafe"),
    pytest.param("docker", {}, id="docker"),
    pytest.param("containerd", {}, id="containerd"),
    pytest.param("rollback", {}, id="rollback-empty-imagetype"),
    pytest.param("rollback", {"imagetype": DROP}, id="rollback-no-imagetype"),
    pytest.param("rollback", {"imagetype": "disk"}, id="rollback-with-imagetype"),
    pytest.param("rollback", {"imagetype": None}, id="rollback-null-imagetype"),
    # osversion: shaped like a node's osImage
    pytest.param("disk", {"osversion": "KubeOS 2.0"}, id="osversion-two-parts"),
    pytest.param("disk", {"osversion": "KubeOS 1.0.0-rc1"}, id="osversion-prerelease"),
    pytest.param("disk", {"osversion": "KubeOS v1.0.0"}, id="osversion-v-prefix"),
    pytest.param("disk", {"osversion": "openEuler 22.03 (LTS-SP1)"}, id="osversion-openeuler"),
    pytest.param("disk", {"osversion": "Debian GNU/Linux 12 (bookworm)"}, id="osversion-debian"),
    pytest.param("disk", {"osversion": "  KubeOS 1.0.0  "}, id="osversion-padded"),
    # maxunavailable: an integer >= 1, no upper bound tied to the node count
    pytest.param("disk", {"maxunavailable": 1}, id="maxunavailable-1"),
    pytest.param("disk", {"maxunavailable": 10_000}, id="maxunavailable-above-node-count"),
    pytest.param("disk", {"maxunavailable": 2**31 - 1}, id="maxunavailable-int32-max"),
    # imageurl schemes, compared case-insensitively
    pytest.param("disk", {"imageurl": "HTTPS://images.example.com/x.img"}, id="url-upper-https"),
    pytest.param("http", {"imageurl": "HTTP://images.example.com/x.img"}, id="url-upper-http-flagsafe"),
    pytest.param("http", {"imageurl": "http://images.example.com:8080/x.img"}, id="url-http-port"),
    pytest.param("disk", {"imageurl": "https://[fd00::1]:8443/x.img?sig=abc"}, id="url-ipv6-query"),
    # checksum: 64 hex digits, any case
    pytest.param("disk", {"checksum": HEX.upper()}, id="checksum-upper"),
    # certificates: plain file names
    pytest.param("disk", {"cacert": "ca-2024.pem"}, id="cacert-pem"),
    pytest.param("mtls", {"clientcert": "node.crt", "clientkey": "node.key"}, id="mtls-other-names"),
    # container images: the reference's forms
    pytest.param("docker", {"dockerimage": "name:tag"}, id="image-name-tag"),
    pytest.param("docker", {"dockerimage": "repository/name:tag"}, id="image-repo-name-tag"),
    pytest.param("docker", {"dockerimage": "host:5000/a/b:tag"}, id="image-host-port"),
    pytest.param("docker", {"dockerimage": "192.168.122.123:5000/kubeos-x86_64:2023-01"}, id="image-ip"),
    pytest.param("docker", {"dockerimage": f"name@sha256:{HEX}"}, id="image-digest"),
    pytest.param("docker", {"dockerimage": f"name@sha256:{HEX.upper()}"}, id="image-digest-upper"),
    pytest.param("docker", {"dockerimage": "Repo/Name:V1"}, id="image-uppercase-like-reference"),
    pytest.param("containerd", {"dockerimage": DIGEST_IMAGE, "checksum": HEX.upper()}, id="image-digest-checksum"),
    pytest.param("docker", {"checksum": HEX}, id="docker-checksum"),
    # fields that do not apply may be empty or null, or set (a warning, see below)
    pytest.param("disk", {"dockerimage": ""}, id="disk-empty-dockerimage"),
    pytest.param("docker", {"imageurl": "", "checksum": "", "flagSafe": False, "mtls": True}, id="docker-seed-extras"),
    pytest.param("docker", {"imageurl": None, "cacert": None}, id="docker-null-extras"),
    pytest.param("disk", {"dockerimage": "not an image"}, id="disk-leftover-dockerimage"),
    pytest.param("docker", {"imageurl": "ftp://leftover"}, id="docker-leftover-imageurl"),
    pytest.param("rollback", {"imageurl": "x", "dockerimage": "y", "checksum": "image.checksum"}, id="rollback-extras"),
    # the newer optional fields
    pytest.param("disk", {"evictpodforce": True}, id="evictpodforce"),
    pytest.param("disk", {"nodeselector": "no-label"}, id="nodeselector-no-label"),
    pytest.param("disk", {"nodeselector": "all-label"}, id="nodeselector-all-label"),
    pytest.param("disk", {"nodeselector": "pool_a.1-x"}, id="nodeselector-value"),
    pytest.param("disk", {"timeinterval": 0}, id="timeinterval-0"),
    pytest.param("disk", {"timeinterval": 15}, id="timeinterval-15"),
    pytest.param("disk", {"executionmode": "serial"}, id="executionmode-serial"),
    pytest.param("disk", {"executionmode": "parallel"}, id="executionmode-parallel"),
    pytest.param("disk", {"failurebudget": 0, "failurepolicy": "pause"}, id="failure-pause"),
    pytest.param("disk", {"failurebudget": 3, "failurepolicy": "rollback"}, id="failure-rollback"),
    pytest.param("disk", {"includecontrolplane": True}, id="includecontrolplane"),
    pytest.param("disk", {"draintimeout": 1, "boottimeout": 1}, id="timeouts-min"),
    # time windows
    pytest.param("disk", {"timewindow": {"starttime": "01:00:00", "endtime": "05:00:00"}}, id="window-daily"),
    pytest.param("disk", {"timewindow": {"starttime": "22:00:00", "endtime": "06:00:00"}}, id="window-wraps"),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "2030-01-01 22:00:00", "endtime": "2030-01-02 06:00:00"}},
        id="window-dates",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "2030-9-01 00:00:00", "endtime": "2030-10-01 00:00:00"}},
        id="window-unpadded",
    ),
    pytest.param("disk", {"timewindow": {"starttime": "", "endtime": ""}}, id="window-empty"),
    pytest.param("disk", {"timewindow": {}}, id="window-no-ends"),
    pytest.param("disk", {"timewindow": None}, id="window-null"),
    # unknown fields that are not a case slip are ignored with a warning
    pytest.param("disk", {"sysconfigs": {"version": "v1"}}, id="unknown-field"),
]

INVALID: list[Any] = [
    # opstype
    pytest.param("disk", {"opstype": DROP}, ["spec.opstype"], id="opstype-missing"),
    pytest.param("disk", {"opstype": ""}, ["spec.opstype"], id="opstype-empty"),
    pytest.param("disk", {"opstype": "config"}, ["spec.opstype"], id="opstype-config"),
    pytest.param("disk", {"opstype": "Upgrade"}, ["spec.opstype"], id="opstype-case"),
    pytest.param("disk", {"opstype": True}, ["spec.opstype"], id="opstype-bool"),
    # imagetype
    pytest.param("disk", {"imagetype": DROP}, ["spec.imagetype"], id="imagetype-missing-upgrade"),
    pytest.param("disk", {"imagetype": ""}, ["spec.imagetype"], id="imagetype-empty-upgrade"),
    pytest.param("disk", {"imagetype": "iso"}, ["spec.imagetype"], id="imagetype-iso"),
    pytest.param("disk", {"imagetype": "Disk"}, ["spec.imagetype"], id="imagetype-case"),
    pytest.param("rollback", {"imagetype": "tarball"}, ["spec.imagetype"], id="imagetype-bad-rollback"),
    pytest.param("disk", {"imagetype": ["disk"]}, ["spec.imagetype"], id="imagetype-list"),
    # osversion
    pytest.param("disk", {"osversion": DROP}, ["spec.osversion"], id="osversion-missing"),
    pytest.param("disk", {"osversion": ""}, ["spec.osversion"], id="osversion-empty"),
    pytest.param("disk", {"osversion": "edit.os.version"}, ["spec.osversion"], id="osversion-placeholder"),
    pytest.param("disk", {"osversion": "KubeOS pervious version"}, ["spec.osversion"], id="osversion-no-number"),
    pytest.param("disk", {"osversion": "KubeOS"}, ["spec.osversion"], id="osversion-name-only"),
    pytest.param("disk", {"osversion": "1.0.0"}, ["spec.osversion"], id="osversion-number-only"),
    pytest.param("disk", {"osversion": "KubeOS \u0661.\u0660"}, ["spec.osversion"], id="osversion-non-ascii-digits"),
    pytest.param("disk", {"osversion": 1.0}, ["spec.osversion"], id="osversion-float"),
    pytest.param("disk", {"osversion": "KubeOS 1.0.0\nKubeOS 2"}, ["spec.osversion"], id="osversion-two-lines"),
    pytest.param("disk", {"osversion": "KubeOS " + "1" * 300}, ["spec.osversion"], id="osversion-too-long"),
    # maxunavailable
    pytest.param("disk", {"maxunavailable": DROP}, ["spec.maxunavailable"], id="max-missing"),
    pytest.param("disk", {"maxunavailable": None}, ["spec.maxunavailable"], id="max-null"),
    pytest.param("disk", {"maxunavailable": 0}, ["spec.maxunavailable"], id="max-0"),
    pytest.param("disk", {"maxunavailable": -1}, ["spec.maxunavailable"], id="max-negative"),
    pytest.param("disk", {"maxunavailable": 1.5}, ["spec.maxunavailable"], id="max-float"),
    pytest.param("disk", {"maxunavailable": 2.0}, ["spec.maxunavailable"], id="max-whole-float"),
    pytest.param("disk", {"maxunavailable": "2"}, ["spec.maxunavailable"], id="max-string"),
    pytest.param("disk", {"maxunavailable": True}, ["spec.maxunavailable"], id="max-bool"),
    pytest.param("disk", {"maxunavailable": 2**31}, ["spec.maxunavailable"], id="max-overflow"),
    # imageurl
    pytest.param("disk", {"imageurl": DROP}, ["spec.imageurl"], id="url-missing"),
    pytest.param("disk", {"imageurl": ""}, ["spec.imageurl"], id="url-empty"),
    pytest.param("disk", {"imageurl": "edit.image.url"}, ["spec.imageurl"], id="url-placeholder"),
    pytest.param("disk", {"imageurl": "ftp://host/x.img"}, ["spec.imageurl"], id="url-ftp"),
    pytest.param("disk", {"imageurl": "file:///x.img"}, ["spec.imageurl"], id="url-file"),
    pytest.param("disk", {"imageurl": "//host/x.img"}, ["spec.imageurl"], id="url-no-scheme"),
    pytest.param("disk", {"imageurl": "https://"}, ["spec.imageurl"], id="url-no-host"),
    pytest.param("disk", {"imageurl": "https:///x.img"}, ["spec.imageurl"], id="url-empty-host"),
    pytest.param("http", {"imageurl": "http://host:99999/x"}, ["spec.imageurl"], id="url-port-range"),
    pytest.param("http", {"imageurl": "http://host:0/x"}, ["spec.imageurl"], id="url-port-0"),
    pytest.param("disk", {"imageurl": "https://[fd00::1/x"}, ["spec.imageurl"], id="url-bad-ipv6"),
    pytest.param("disk", {"imageurl": "https://host/a b.img"}, ["spec.imageurl"], id="url-space"),
    pytest.param("disk", {"imageurl": 42}, ["spec.imageurl"], id="url-number"),
    pytest.param("http", {"flagSafe": False}, ["spec.imageurl"], id="http-not-safe"),
    pytest.param("http", {"flagSafe": DROP}, ["spec.imageurl"], id="http-flagsafe-missing"),
    pytest.param(
        "http", {"imageurl": "HTTP://host/x.img", "flagSafe": False}, ["spec.imageurl"], id="http-upper-unsafe"
    ),
    pytest.param("http", {"flagSafe": "true"}, ["spec.flagSafe"], id="flagsafe-quoted-true"),
    pytest.param("http", {"flagSafe": 1}, ["spec.flagSafe"], id="flagsafe-int"),
    # checksum
    pytest.param("disk", {"checksum": DROP}, ["spec.checksum"], id="checksum-missing"),
    pytest.param("disk", {"checksum": ""}, ["spec.checksum"], id="checksum-empty"),
    pytest.param("disk", {"checksum": "image.checksum"}, ["spec.checksum"], id="checksum-placeholder"),
    pytest.param("disk", {"checksum": HEX[:-1]}, ["spec.checksum"], id="checksum-63"),
    pytest.param("disk", {"checksum": HEX + "0"}, ["spec.checksum"], id="checksum-65"),
    pytest.param("disk", {"checksum": "g" * 64}, ["spec.checksum"], id="checksum-not-hex"),
    pytest.param("disk", {"checksum": f"sha256:{HEX}"}, ["spec.checksum"], id="checksum-prefix"),
    pytest.param("disk", {"checksum": 12345}, ["spec.checksum"], id="checksum-number"),
    pytest.param("docker", {"checksum": "abc"}, ["spec.checksum"], id="checksum-bad-docker"),
    # https certificates and mTLS
    pytest.param("disk", {"cacert": DROP}, ["spec.cacert"], id="https-cacert-missing"),
    pytest.param("disk", {"cacert": ""}, ["spec.cacert"], id="https-cacert-empty"),
    pytest.param("disk", {"cacert": "ca certificate"}, ["spec.cacert"], id="cacert-space"),
    pytest.param("disk", {"cacert": "../ca.crt"}, ["spec.cacert"], id="cacert-traversal"),
    pytest.param("disk", {"cacert": "/etc/ca.crt"}, ["spec.cacert"], id="cacert-absolute"),
    pytest.param("disk", {"cacert": "a/b"}, ["spec.cacert"], id="cacert-subdir"),
    pytest.param("disk", {"cacert": "a\\b"}, ["spec.cacert"], id="cacert-backslash"),
    pytest.param("disk", {"cacert": ".."}, ["spec.cacert"], id="cacert-dotdot"),
    pytest.param("disk", {"cacert": "."}, ["spec.cacert"], id="cacert-dot"),
    pytest.param("disk", {"cacert": True}, ["spec.cacert"], id="cacert-bool"),
    pytest.param("mtls", {"clientcert": DROP}, ["spec.clientcert"], id="mtls-clientcert-missing"),
    pytest.param("mtls", {"clientkey": ""}, ["spec.clientkey"], id="mtls-clientkey-empty"),
    pytest.param("mtls", {"clientcert": "../c.crt"}, ["spec.clientcert"], id="clientcert-traversal"),
    pytest.param("mtls", {"clientkey": "/root/c.key"}, ["spec.clientkey"], id="clientkey-absolute"),
    pytest.param("mtls", {"cacert": DROP, "clientcert": DROP}, ["spec.cacert", "spec.clientcert"], id="mtls-two"),
    pytest.param("http", {"mtls": True}, ["spec.mtls"], id="mtls-over-http"),
    pytest.param("disk", {"mtls": "yes"}, ["spec.mtls"], id="mtls-string"),
    pytest.param("docker", {"cacert": "/etc/ca.crt"}, ["spec.cacert"], id="cert-path-checked-always"),
    # container images
    pytest.param("docker", {"dockerimage": DROP}, ["spec.dockerimage"], id="image-missing"),
    pytest.param("containerd", {"dockerimage": ""}, ["spec.dockerimage"], id="image-empty"),
    pytest.param("docker", {"dockerimage": "repo/name"}, ["spec.dockerimage"], id="image-no-tag"),
    pytest.param("docker", {"dockerimage": f"name:tag@sha256:{HEX}"}, ["spec.dockerimage"], id="image-tag-and-digest"),
    pytest.param("docker", {"dockerimage": "name@sha256:abc"}, ["spec.dockerimage"], id="image-short-digest"),
    pytest.param("docker", {"dockerimage": f"name@sha512:{HEX}"}, ["spec.dockerimage"], id="image-sha512"),
    pytest.param("docker", {"dockerimage": "na me:1"}, ["spec.dockerimage"], id="image-space"),
    pytest.param(
        "docker", {"dockerimage": "dockerimage like repository/name:tag"}, ["spec.dockerimage"], id="image-seed"
    ),
    pytest.param("docker", {"dockerimage": "nginx:ä"}, ["spec.dockerimage"], id="image-non-ascii"),
    pytest.param("docker", {"dockerimage": "/myimage:1"}, ["spec.dockerimage"], id="image-leading-slash"),
    pytest.param("docker", {"dockerimage": "registry.com//myimage:tag"}, ["spec.dockerimage"], id="image-double-slash"),
    pytest.param("docker", {"dockerimage": "myimage:"}, ["spec.dockerimage"], id="image-empty-tag"),
    pytest.param("docker", {"dockerimage": ":tag"}, ["spec.dockerimage"], id="image-no-name"),
    pytest.param("docker", {"dockerimage": "myimage::tag"}, ["spec.dockerimage"], id="image-double-colon"),
    pytest.param("docker", {"dockerimage": "alpine;v1.0"}, ["spec.dockerimage"], id="image-semicolon"),
    pytest.param("docker", {"dockerimage": 5}, ["spec.dockerimage"], id="image-number"),
    pytest.param(
        "docker", {"dockerimage": DIGEST_IMAGE, "checksum": OTHER_HEX}, ["spec.checksum"], id="image-digest-mismatch"
    ),
    # the newer optional fields
    pytest.param("disk", {"evictpodforce": "true"}, ["spec.evictpodforce"], id="evictpodforce-string"),
    pytest.param("disk", {"nodeselector": "a b"}, ["spec.nodeselector"], id="nodeselector-space"),
    pytest.param("disk", {"nodeselector": "-pool"}, ["spec.nodeselector"], id="nodeselector-leading-dash"),
    pytest.param("disk", {"nodeselector": "x" * 64}, ["spec.nodeselector"], id="nodeselector-too-long"),
    pytest.param("disk", {"nodeselector": 7}, ["spec.nodeselector"], id="nodeselector-number"),
    pytest.param("disk", {"timeinterval": -1}, ["spec.timeinterval"], id="timeinterval-negative"),
    pytest.param("disk", {"timeinterval": "15"}, ["spec.timeinterval"], id="timeinterval-string"),
    pytest.param("disk", {"executionmode": "Serial"}, ["spec.executionmode"], id="executionmode-case"),
    pytest.param("disk", {"executionmode": "batch"}, ["spec.executionmode"], id="executionmode-other"),
    pytest.param("disk", {"failurebudget": -1}, ["spec.failurebudget"], id="failurebudget-negative"),
    pytest.param("disk", {"failurepolicy": "abort"}, ["spec.failurepolicy"], id="failurepolicy-other"),
    pytest.param("disk", {"includecontrolplane": "yes"}, ["spec.includecontrolplane"], id="controlplane-string"),
    pytest.param("disk", {"draintimeout": 0}, ["spec.draintimeout"], id="draintimeout-0"),
    pytest.param("disk", {"boottimeout": 0}, ["spec.boottimeout"], id="boottimeout-0"),
    pytest.param("disk", {"boottimeout": False}, ["spec.boottimeout"], id="boottimeout-bool"),
    # time windows
    pytest.param("disk", {"timewindow": {"starttime": "22:00:00"}}, ["spec.timewindow.endtime"], id="window-no-end"),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "", "endtime": "06:00:00"}},
        ["spec.timewindow.starttime"],
        id="window-no-start",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "22:00:00", "endtime": "2030-01-02 06:00:00"}},
        ["spec.timewindow"],
        id="window-mixed-formats",
    ),
    pytest.param(
        "disk", {"timewindow": {"starttime": "03:00:00", "endtime": "03:00:00"}}, ["spec.timewindow"], id="window-equal"
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "3:00:00", "endtime": "03:00:00"}},
        ["spec.timewindow"],
        id="window-equal-parsed",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "2030-01-02 00:00:00", "endtime": "2030-01-01 00:00:00"}},
        ["spec.timewindow.endtime"],
        id="window-dates-reversed",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "2030-9-01 00:00:00", "endtime": "2030-09-01 00:00:00"}},
        ["spec.timewindow"],
        id="window-dates-equal-parsed",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "25:00:00", "endtime": "06:00:00"}},
        ["spec.timewindow.starttime"],
        id="window-hour",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "22:00:00", "endtime": "06:00"}},
        ["spec.timewindow.endtime"],
        id="window-no-secs",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": "2030-13-01 00:00:00", "endtime": "2030-12-01 00:00:00"}},
        ["spec.timewindow.starttime"],
        id="window-month",
    ),
    pytest.param(
        "disk",
        {"timewindow": {"starttime": 79200, "endtime": "06:00:00"}},
        ["spec.timewindow.starttime"],
        id="window-int",
    ),
    pytest.param("disk", {"timewindow": "22:00:00-06:00:00"}, ["spec.timewindow"], id="window-string"),
    pytest.param(
        "disk",
        {"timewindow": {"StartTime": "22:00:00", "endtime": "06:00:00"}},
        ["spec.timewindow.StartTime", "spec.timewindow.starttime"],
        id="window-case-slip",
    ),
    # unknown fields that are case slips lose the user's intent: errors
    pytest.param(
        "disk", {"osVersion": "KubeOS 1.0.1", "osversion": DROP}, ["spec.osVersion", "spec.osversion"], id="osVersion"
    ),
    pytest.param("http", {"flagsafe": True, "flagSafe": DROP}, ["spec.flagsafe", "spec.imageurl"], id="flagsafe-case"),
    pytest.param("disk", {"MaxUnavailable": 3}, ["spec.MaxUnavailable"], id="maxunavailable-case"),
]


@pytest.mark.parametrize(("base", "changes"), VALID)
def test_valid_resources_are_accepted(base: str, changes: dict[str, Any]) -> None:
    report = check_os_document(resource(base, **changes), bare_spec=False)
    assert report.errors == []
    assert report.spec is not None


@pytest.mark.parametrize(("base", "changes", "fields"), INVALID)
def test_invalid_resources_name_each_offending_field(base: str, changes: dict[str, Any], fields: list[str]) -> None:
    report = check_os_document(resource(base, **changes), bare_spec=False)
    assert report.spec is None
    assert sorted(e.field for e in report.errors) == sorted(fields)
    for error in report.errors:
        assert error.reason and "Traceback" not in error.reason and len(error.reason) < 300
        assert str(error) == f"{error.field}: {error.reason}"


WARNED: list[Any] = [
    pytest.param("disk", {"dockerimage": "repo/name:tag"}, ["spec.dockerimage"], id="disk-dockerimage"),
    pytest.param("docker", {"imageurl": "https://host/x.img"}, ["spec.imageurl"], id="docker-imageurl"),
    pytest.param("docker", {"mtls": True}, ["spec.mtls"], id="docker-mtls"),
    pytest.param(
        "docker",
        {"clientcert": "c.crt", "clientkey": "c.key"},
        ["spec.clientcert", "spec.clientkey"],
        id="docker-client",
    ),
    pytest.param("disk", {"flagSafe": True}, ["spec.flagSafe"], id="https-flagsafe"),
    pytest.param("disk", {"clientcert": "c.crt"}, ["spec.clientcert"], id="https-client-without-mtls"),
    pytest.param("http", {"cacert": "ca.crt"}, ["spec.cacert"], id="http-cacert"),
    pytest.param(
        "rollback",
        {"imageurl": "edit.image.url", "dockerimage": "x", "checksum": "image.checksum"},
        ["spec.checksum", "spec.dockerimage", "spec.imageurl"],
        id="rollback-image-fields",
    ),
    pytest.param("disk", {"sysconfigs": []}, ["spec.sysconfigs"], id="unknown"),
    pytest.param("disk", {"imagetyp": "disk"}, ["spec.imagetyp"], id="unknown-typo"),
    pytest.param("disk", {"timewindow": {"tz": "UTC"}}, ["spec.timewindow.tz"], id="unknown-in-window"),
]


@pytest.mark.parametrize(("base", "changes", "fields"), WARNED)
def test_fields_that_do_not_apply_are_warnings(base: str, changes: dict[str, Any], fields: list[str]) -> None:
    plain = check_os_document(resource(base), bare_spec=False)
    assert plain.warnings == [] and plain.valid
    report = check_os_document(resource(base, **changes), bare_spec=False)
    assert report.errors == []
    assert sorted(w.field for w in report.warnings) == fields


def test_every_error_is_reported_at_once() -> None:
    doc = resource(
        "mtls",
        osversion="",
        maxunavailable=0,
        checksum="abc",
        cacert="../ca",
        clientcert="",
        clientkey="/k",
        evictpodforce="no",
        timeinterval=-5,
        nodeselector="a b",
    )
    fields = [e.field for e in check_os_document(doc, bare_spec=False).errors]
    assert sorted(fields) == sorted(
        [
            "spec.osversion",
            "spec.maxunavailable",
            "spec.checksum",
            "spec.cacert",
            "spec.clientcert",
            "spec.clientkey",
            "spec.evictpodforce",
            "spec.timeinterval",
            "spec.nodeselector",
        ]
    )
