"""The OS resource model around the rules: the envelope, parsing entry points, normalised values, TimeWindow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from models.os_resource import (
    FieldError,
    OSSpec,
    SpecInvalid,
    TimeWindow,
    check_os_document,
    os_major_version,
    parse_os_spec,
)
from tests.models.samples import HEX, resource, spec

ENVELOPE_ERRORS: list[Any] = [
    pytest.param({"apiVersion": "upgrade.openeuler.org/v1"}, ["apiVersion"], id="apiversion-wrong"),
    pytest.param({"apiVersion": None}, ["apiVersion"], id="apiversion-missing"),
    pytest.param({"kind": "os"}, ["kind"], id="kind-case"),
    pytest.param({"kind": "Deployment"}, ["kind"], id="kind-other"),
    pytest.param({"metadata": None}, ["metadata.name"], id="metadata-missing"),
    pytest.param({"metadata": "os-sample"}, ["metadata"], id="metadata-scalar"),
    pytest.param({"metadata": {"namespace": "x"}}, ["metadata.name"], id="name-missing"),
    pytest.param({"metadata": {"name": ""}}, ["metadata.name"], id="name-empty"),
    pytest.param({"metadata": {"name": 5}}, ["metadata.name"], id="name-number"),
    pytest.param({"metadata": {"name": "My_OS"}}, ["metadata.name"], id="name-upper"),
    pytest.param({"metadata": {"name": "a..b"}}, ["metadata.name"], id="name-empty-label"),
    pytest.param({"metadata": {"name": "a-.b"}}, ["metadata.name"], id="name-label-end"),
    pytest.param({"metadata": {"name": "a" * 254}}, ["metadata.name"], id="name-too-long"),
    pytest.param({"spec": None}, ["spec"], id="spec-missing"),
    pytest.param({"spec": ["opstype"]}, ["spec"], id="spec-list"),
    pytest.param({"spec": "rollback"}, ["spec"], id="spec-scalar"),
    pytest.param(
        {"kind": "OSes", "spec": {}}, ["kind", "spec.maxunavailable", "spec.opstype", "spec.osversion"], id="all"
    ),
]


@pytest.mark.parametrize(("changes", "fields"), ENVELOPE_ERRORS)
def test_envelope_errors_name_the_field(changes: dict[str, Any], fields: list[str]) -> None:
    doc = {**resource(), **changes}
    doc = {k: v for k, v in doc.items() if v is not None}
    assert sorted(e.field for e in check_os_document(doc, bare_spec=False).errors) == sorted(fields)


@pytest.mark.parametrize("name", ["os-sample", "a", "pool-a.v1", "1-2-3", "a" * 253])
def test_resource_names_kubernetes_accepts(name: str) -> None:
    report = check_os_document({**resource(), "metadata": {"name": name, "namespace": "kubeos"}}, bare_spec=False)
    assert report.valid and report.name == name and report.namespace == "kubeos"


@pytest.mark.parametrize("doc", [["a"], "OS", 3, None, True])
def test_a_document_that_is_not_a_mapping_is_refused(doc: Any) -> None:
    assert [e.field for e in check_os_document(doc).errors] == ["(document)"]


def test_a_bare_spec_is_a_spec_for_callers_but_not_a_resource_for_validate() -> None:
    assert parse_os_spec(spec("rollback")).osversion == "KubeOS 1.0.0"
    fields = {e.field for e in check_os_document(spec("rollback"), bare_spec=False).errors}
    assert fields == {"apiVersion", "kind", "metadata.name", "spec"}


def test_parse_os_spec_raises_spec_invalid_listing_every_error() -> None:
    with pytest.raises(SpecInvalid) as caught:
        parse_os_spec(resource(maxunavailable=0, checksum="x"))
    assert [e.field for e in caught.value.errors] == ["spec.maxunavailable", "spec.checksum"]
    text = str(caught.value)
    assert "spec.maxunavailable: must be at least 1, got 0" in text and "spec.checksum:" in text


def test_constructing_the_model_runs_the_rules() -> None:
    with pytest.raises(SpecInvalid) as caught:
        OSSpec.model_validate(spec(imageurl="ftp://host/x"))
    assert caught.value.errors == [caught.value.errors[0]] and caught.value.errors[0].field == "spec.imageurl"
    assert isinstance(caught.value.errors[0], FieldError)


def test_values_are_normalised() -> None:
    parsed = parse_os_spec(resource(checksum=HEX.upper(), imageurl="HTTPS://Host/x.img", osversion=" KubeOS 1.0.1 "))
    assert parsed.checksum == HEX
    assert parsed.imageurl == "HTTPS://Host/x.img"
    assert parsed.osversion == "KubeOS 1.0.1"
    rolled = parse_os_spec(resource("rollback", checksum="not hex"))
    assert rolled.checksum == ""


def test_defaults_of_the_optional_fields() -> None:
    parsed = parse_os_spec(resource("rollback"))
    assert parsed.imagetype == ""
    assert (parsed.evictpodforce, parsed.includecontrolplane, parsed.flagSafe, parsed.mtls) == (False,) * 4
    assert (parsed.nodeselector, parsed.timewindow, parsed.timeinterval) == ("", None, 0)
    assert (parsed.executionmode, parsed.failurebudget, parsed.failurepolicy) == ("parallel", 0, "pause")
    assert (parsed.draintimeout, parsed.boottimeout) == (300, 600)


@pytest.mark.parametrize("kind", ["disk", "mtls", "http", "docker", "containerd", "rollback"])
def test_a_parsed_spec_round_trips(kind: str) -> None:
    parsed = parse_os_spec(resource(kind, timewindow={"starttime": "22:00:00", "endtime": "06:00:00"}))
    assert OSSpec.model_validate(parsed.model_dump()) == parsed
    assert OSSpec.model_validate_json(parsed.model_dump_json()) == parsed


def test_summary_window_and_major_version() -> None:
    disk = parse_os_spec(resource(maxunavailable=5))
    assert disk.summary() == "upgrade to 'KubeOS 1.0.1' from disk https://192.168.122.15/update.img, 5 at a time"
    assert disk.window == 5 and disk.target_major == "1"
    serial = parse_os_spec(resource("docker", executionmode="serial", maxunavailable=5))
    assert serial.window == 1 and serial.is_container_image
    assert "registry.example.com/kubeos/os:1.0.1" in serial.summary()
    assert parse_os_spec(resource("rollback")).summary() == "rollback to 'KubeOS 1.0.0', 1 at a time"


@pytest.mark.parametrize(
    ("osversion", "major"),
    [("KubeOS 1.0.0", "1"), ("openEuler 22.03 (LTS-SP1)", "22"), ("KubeOS v2.1", "2"), ("KubeOS next", None)],
)
def test_os_major_version(osversion: str, major: str | None) -> None:
    assert os_major_version(osversion) == major


# ----------------------------------------------------------------------------------------------- TimeWindow


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2030, 1, day, hour, minute)


CONTAINS: list[Any] = [
    pytest.param(("", ""), at(3), True, id="empty-always-open"),
    pytest.param(("01:00:00", "05:00:00"), at(1), True, id="daily-start-inclusive"),
    pytest.param(("01:00:00", "05:00:00"), at(4, 59), True, id="daily-inside"),
    pytest.param(("01:00:00", "05:00:00"), at(5), False, id="daily-end-exclusive"),
    pytest.param(("01:00:00", "05:00:00"), at(0, 59), False, id="daily-before"),
    pytest.param(("22:00:00", "06:00:00"), at(23), True, id="wrap-evening"),
    pytest.param(("22:00:00", "06:00:00"), at(0), True, id="wrap-midnight"),
    pytest.param(("22:00:00", "06:00:00"), at(5, 59), True, id="wrap-morning"),
    pytest.param(("22:00:00", "06:00:00"), at(6), False, id="wrap-end"),
    pytest.param(("22:00:00", "06:00:00"), at(12), False, id="wrap-noon"),
    pytest.param(("2030-01-01 22:00:00", "2030-01-02 06:00:00"), at(23), True, id="dates-inside"),
    pytest.param(("2030-01-01 22:00:00", "2030-01-02 06:00:00"), at(3, day=2), True, id="dates-next-day"),
    pytest.param(("2030-01-01 22:00:00", "2030-01-02 06:00:00"), at(23, day=2), False, id="dates-after"),
    pytest.param(("2030-01-01 22:00:00", "2030-01-02 06:00:00"), at(21), False, id="dates-before"),
    pytest.param(("01:00:00", "05:00:00"), at(2).replace(tzinfo=UTC), True, id="aware-utc"),
    # 09:30 at UTC+8 is 01:30 UTC: inside a 01:00-05:00 UTC window, although its wall-clock hour is not.
    pytest.param(
        ("01:00:00", "05:00:00"), at(9, 30).replace(tzinfo=timezone(timedelta(hours=8))), True, id="aware-east"
    ),
    pytest.param(("01:00:00", "05:00:00"), at(2).replace(tzinfo=timezone(timedelta(hours=-5))), False, id="aware-west"),
]


@pytest.mark.parametrize(("ends", "moment", "inside"), CONTAINS)
def test_time_window_contains(ends: tuple[str, str], moment: datetime, inside: bool) -> None:
    window = TimeWindow(starttime=ends[0], endtime=ends[1])
    assert window.contains(moment) is inside


def test_a_validated_window_is_a_time_window() -> None:
    parsed = parse_os_spec(resource(timewindow={"starttime": "2030-01-01 00:00:00", "endtime": "2030-01-02 00:00:00"}))
    assert isinstance(parsed.timewindow, TimeWindow)
    assert not parsed.timewindow.daily and not parsed.timewindow.empty
    assert parsed.timewindow.contains(at(12))
    daily = parse_os_spec(resource(timewindow={"starttime": "22:00:00", "endtime": "06:00:00"})).timewindow
    assert daily is not None and daily.daily
