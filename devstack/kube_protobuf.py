"""Read the protobuf request bodies kubectl sends for built-in kinds, as the JSON the store understands.

client-go's typed clients (``kubectl create namespace|configmap|deployment|secret|pdb``, the evictions of
``kubectl drain``) always encode built-in kinds as ``application/vnd.kubernetes.protobuf``: nothing the
server advertises changes that (client-go falls back to JSON on a 415 only for CBOR). So the emulator decodes
the envelope, ``k8s\\x00`` + ``runtime.Unknown{typeMeta, raw, contentEncoding, contentType}``, and ``raw``
against the field numbers of the Kubernetes ``generated.proto`` messages listed here.

The generated Go marshallers write every non-pointer field, zero or not; a zero non-pointer field is dropped
here, as ``omitempty`` drops it from JSON. A field this table does not know is accepted only when it is
zero; otherwise the request is refused (415) rather than stored with data missing. Kinds without a table
decode their metadata only, under the same rule, which covers simple kinds such as ServiceAccount.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devstack.kube_semantics import JSON

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf object this emulator can read in full."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # string, bytes, int, bool, time, quantity, intstr, map, map:bytes, map:quantity, or a message
    repeated: bool = False
    pointer: bool = False  # a Go pointer: written only when set, so a zero value is meaningful


def _message(*specs: tuple[int, str] | tuple[int, str, str]) -> dict[int, Field]:
    """Field tables in a short notation: (number, jsonName[, type]); ``[]T`` repeated, ``T*`` a pointer."""
    fields = {}
    for number, name, *rest in specs:
        kind = rest[0] if rest else "string"
        repeated, kind = kind.startswith("[]"), kind.removeprefix("[]")
        pointer, kind = kind.endswith("*"), kind.removesuffix("*")
        fields[number] = Field(name, kind, repeated, pointer)
    return fields


# Field numbers of k8s.io/api and k8s.io/apimachinery generated.proto (stable across releases).
MESSAGES: dict[str, dict[int, Field]] = {
    "TypeMeta": _message((1, "apiVersion"), (2, "kind")),
    "ObjectMeta": _message(
        (1, "name"),
        (2, "generateName"),
        (3, "namespace"),
        (5, "uid"),
        (6, "resourceVersion"),
        (7, "generation", "int"),
        (8, "creationTimestamp", "time"),
        (9, "deletionTimestamp", "time*"),
        (10, "deletionGracePeriodSeconds", "int*"),
        (11, "labels", "map"),
        (12, "annotations", "map"),
        (13, "ownerReferences", "[]OwnerReference"),
        (14, "finalizers", "[]string"),
    ),
    "OwnerReference": _message(
        (1, "kind"),
        (3, "name"),
        (4, "uid"),
        (5, "apiVersion"),
        (6, "controller", "bool*"),
        (7, "blockOwnerDeletion", "bool*"),
    ),
    "LabelSelector": _message((1, "matchLabels", "map"), (2, "matchExpressions", "[]LabelSelectorRequirement")),
    "LabelSelectorRequirement": _message((1, "key"), (2, "operator"), (3, "values", "[]string")),
    "DeleteOptions": _message(
        (1, "gracePeriodSeconds", "int*"),
        (2, "preconditions", "Preconditions*"),
        (3, "orphanDependents", "bool*"),
        (4, "propagationPolicy", "string*"),
        (5, "dryRun", "[]string"),
    ),
    "Preconditions": _message((1, "uid", "string*"), (2, "resourceVersion", "string*")),
    # Kinds without a table of their own: only metadata is read.
    "Object": _message((1, "metadata", "ObjectMeta")),
    "Namespace": _message((1, "metadata", "ObjectMeta"), (2, "spec", "NamespaceSpec")),
    "NamespaceSpec": _message((1, "finalizers", "[]string")),
    "ConfigMap": _message(
        (1, "metadata", "ObjectMeta"), (2, "data", "map"), (3, "binaryData", "map:bytes"), (4, "immutable", "bool*")
    ),
    "Secret": _message(
        (1, "metadata", "ObjectMeta"),
        (2, "data", "map:bytes"),
        (3, "type"),
        (4, "stringData", "map"),
        (5, "immutable", "bool*"),
    ),
    "ResourceQuota": _message((1, "metadata", "ObjectMeta"), (2, "spec", "ResourceQuotaSpec")),
    "ResourceQuotaSpec": _message((1, "hard", "map:quantity"), (2, "scopes", "[]string")),
    "Service": _message((1, "metadata", "ObjectMeta"), (2, "spec", "ServiceSpec")),
    "ServiceSpec": _message(
        (1, "ports", "[]ServicePort"), (2, "selector", "map"), (3, "clusterIP"), (4, "type"), (10, "externalName")
    ),
    "ServicePort": _message(
        (1, "name"), (2, "protocol"), (3, "port", "int"), (4, "targetPort", "intstr"), (5, "nodePort", "int")
    ),
    "Pod": _message((1, "metadata", "ObjectMeta"), (2, "spec", "PodSpec")),
    "PodTemplateSpec": _message((1, "metadata", "ObjectMeta"), (2, "spec", "PodSpec")),
    "PodSpec": _message(
        (2, "containers", "[]Container"),
        (3, "restartPolicy"),
        (4, "terminationGracePeriodSeconds", "int*"),
        (5, "activeDeadlineSeconds", "int*"),
        (6, "dnsPolicy"),
        (7, "nodeSelector", "map"),
        (8, "serviceAccountName"),
        (9, "serviceAccount"),
        (10, "nodeName"),
        (11, "hostNetwork", "bool"),
        (12, "hostPID", "bool"),
        (13, "hostIPC", "bool"),
        (15, "imagePullSecrets", "[]LocalObjectReference"),
        (16, "hostname"),
        (17, "subdomain"),
        (19, "schedulerName"),
        (20, "initContainers", "[]Container"),
        (21, "automountServiceAccountToken", "bool*"),
        (22, "tolerations", "[]Toleration"),
        (24, "priorityClassName"),
        (25, "priority", "int*"),
    ),
    "Container": _message(
        (1, "name"),
        (2, "image"),
        (3, "command", "[]string"),
        (4, "args", "[]string"),
        (5, "workingDir"),
        (6, "ports", "[]ContainerPort"),
        (7, "env", "[]EnvVar"),
        (8, "resources", "ResourceRequirements"),
        (9, "volumeMounts", "[]VolumeMount"),
        (13, "terminationMessagePath"),
        (14, "imagePullPolicy"),
        (16, "stdin", "bool"),
        (17, "stdinOnce", "bool"),
        (18, "tty", "bool"),
        (20, "terminationMessagePolicy"),
        (24, "restartPolicy", "string*"),
    ),
    "ContainerPort": _message(
        (1, "name"), (2, "hostPort", "int"), (3, "containerPort", "int"), (4, "protocol"), (5, "hostIP")
    ),
    "EnvVar": _message((1, "name"), (2, "value")),
    "ResourceRequirements": _message((1, "limits", "map:quantity"), (2, "requests", "map:quantity")),
    "VolumeMount": _message((1, "name"), (2, "readOnly", "bool"), (3, "mountPath"), (4, "subPath")),
    "LocalObjectReference": _message((1, "name")),
    "Toleration": _message((1, "key"), (2, "operator"), (3, "value"), (4, "effect"), (5, "tolerationSeconds", "int*")),
    "Deployment": _message((1, "metadata", "ObjectMeta"), (2, "spec", "DeploymentSpec")),
    "DeploymentSpec": _message(
        (1, "replicas", "int*"),
        (2, "selector", "LabelSelector*"),
        (3, "template", "PodTemplateSpec"),
        (4, "strategy", "DeploymentStrategy"),
        (5, "minReadySeconds", "int"),
        (6, "revisionHistoryLimit", "int*"),
        (7, "paused", "bool"),
        (9, "progressDeadlineSeconds", "int*"),
    ),
    "DeploymentStrategy": _message((1, "type"), (2, "rollingUpdate", "RollingUpdateDeployment*")),
    "RollingUpdateDeployment": _message((1, "maxUnavailable", "intstr*"), (2, "maxSurge", "intstr*")),
    "Eviction": _message((1, "metadata", "ObjectMeta"), (2, "deleteOptions", "DeleteOptions*")),
    "PodDisruptionBudget": _message((1, "metadata", "ObjectMeta"), (2, "spec", "PodDisruptionBudgetSpec")),
    "PodDisruptionBudgetSpec": _message(
        (1, "minAvailable", "intstr*"),
        (2, "selector", "LabelSelector*"),
        (3, "maxUnavailable", "intstr*"),
        (4, "unhealthyPodEvictionPolicy", "string*"),
    ),
}

# The message of each top-level kind (apiVersion, kind); others decode as "Object".
KINDS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "Pod"): "Pod",
    ("v1", "ResourceQuota"): "ResourceQuota",
    ("v1", "Service"): "Service",
    ("apps/v1", "Deployment"): "Deployment",
    ("policy/v1", "Eviction"): "Eviction",
    ("policy/v1", "PodDisruptionBudget"): "PodDisruptionBudget",
}


# ------------------------------------------------------------------------------------------- wire format


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 64 bits")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: an int for numbers, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ProtobufError(f"unsupported wire type {wire} for field {number}")
        if pos > len(data) or number == 0:
            raise ProtobufError("truncated or malformed message")
        yield number, wire, value


def _is_zero(wire: int, value: Any) -> bool:
    """Whether an unknown field carries nothing: 0, empty, or a message of only such fields."""
    if wire != _LEN:
        return bool(value == 0)
    if not value:
        return True
    try:
        return all(_is_zero(w, v) for _, w, v in _fields(value))
    except ProtobufError:
        return False  # not a message: a non-empty string or bytes


# ------------------------------------------------------------------------------------------------ values


def _int(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value  # int32/int64 are two's complement varints


def _time(data: bytes) -> str:
    seconds = next((_int(v) for n, _, v in _fields(data) if n == 1), 0)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if seconds else ""


def _int_or_string(data: bytes) -> int | str:
    parts = {n: v for n, _, v in _fields(data)}
    return _text(parts.get(3, b"")) if parts.get(1) == 1 else _int(parts.get(2, 0))


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtobufError(f"a string field is not UTF-8: {e}") from e


def _value(field: Field, wire: int, value: Any, where: str) -> Any:
    expected = _VARINT if field.type in ("int", "bool") else _LEN
    if wire != expected:
        raise ProtobufError(f"{where}: wire type {wire}, expected {expected}")
    match field.type:
        case "int":
            return _int(value)
        case "bool":
            return bool(value)
        case "string":
            return _text(value)
        case "bytes":
            return base64.b64encode(value).decode("ascii")
        case "time":
            return _time(value)
        case "quantity":
            return _text(next((v for n, _, v in _fields(value) if n == 1), b""))
        case "intstr":
            return _int_or_string(value)
    return decode_message(value, field.type, where)


def _map_entry(field: Field, data: bytes, where: str) -> tuple[str, Any]:
    entry = {n: v for n, _, v in _fields(data)}
    value_type = field.type.partition(":")[2] or "string"
    return _text(entry.get(1, b"")), _value(Field("value", value_type), _LEN, entry.get(2, b""), where)


def _empty(value: Any) -> bool:
    return value in ("", 0, False) or value == {} or value == []


def decode_message(data: bytes, message: str, where: str = "") -> JSON:
    """One message of ``MESSAGES`` as JSON, with omitempty's view of zero values."""
    table = MESSAGES[message]
    where = where or message
    result: JSON = {}
    pointers = {f.name for f in table.values() if f.pointer}
    for number, wire, value in _fields(data):
        field = table.get(number)
        if field is None:
            if not _is_zero(wire, value):
                raise ProtobufError(f"{where}: field {number} of {message} is not understood by the emulator")
            continue
        path = f"{where}.{field.name}"
        if field.type.startswith("map"):
            key, item = _map_entry(field, value, path)
            result.setdefault(field.name, {})[key] = item
        elif field.repeated:
            result.setdefault(field.name, []).append(_value(field, wire, value, path))
        else:
            result[field.name] = _value(field, wire, value, path)
    return {name: value for name, value in result.items() if name in pointers or not _empty(value)}


def decode_object(body: bytes) -> JSON:
    """A whole request body: the ``k8s\\x00`` envelope and the object inside it."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf prefix k8s\\x00")
    envelope = {number: value for number, _, value in _fields(body[len(MAGIC) :])}
    type_meta = decode_message(envelope.get(1, b""), "TypeMeta")
    for number, name in ((3, "contentEncoding"), (4, "contentType")):
        if envelope.get(number):
            raise ProtobufError(f"{name} {_text(envelope[number])!r} in the envelope is not supported")
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    message = KINDS.get((api_version, kind), "Object")
    obj = decode_message(envelope.get(2, b""), message, kind or "object")
    return {"apiVersion": api_version, "kind": kind, **obj} if kind else obj
