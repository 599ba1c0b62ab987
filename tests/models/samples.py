"""Builders for OS resources in tests: one valid resource per image source, edited per case."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from models.os_resource import check_os_document

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "os"

HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
OTHER_HEX = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"

#: Marks a key to remove in :func:`resource` / :func:`spec`.
DROP = object()

SPECS: dict[str, dict[str, Any]] = {
    "disk": {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": "KubeOS 1.0.1",
        "maxunavailable": 2,
        "imageurl": "https://192.168.122.15/update.img",
        "checksum": HEX,
        "flagSafe": False,
        "mtls": False,
        "cacert": "ca.crt",
    },
    "mtls": {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": "KubeOS 1.0.1",
        "maxunavailable": 2,
        "imageurl": "https://192.168.122.15/update.img",
        "checksum": HEX,
        "mtls": True,
        "cacert": "ca.crt",
        "clientcert": "client.crt",
        "clientkey": "client.key",
    },
    "http": {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": "KubeOS 1.0.1",
        "maxunavailable": 2,
        "imageurl": "http://192.168.122.15/update.img",
        "checksum": HEX,
        "flagSafe": True,
    },
    "docker": {
        "imagetype": "docker",
        "opstype": "upgrade",
        "osversion": "KubeOS 1.0.1",
        "maxunavailable": 2,
        "dockerimage": "registry.example.com/kubeos/os:1.0.1",
    },
    "containerd": {
        "imagetype": "containerd",
        "opstype": "upgrade",
        "osversion": "KubeOS 1.0.1",
        "maxunavailable": 2,
        "dockerimage": "registry.example.com/kubeos/os:1.0.1",
    },
    "rollback": {"imagetype": "", "opstype": "rollback", "osversion": "KubeOS 1.0.0", "maxunavailable": 1},
}


def spec(kind: str = "disk", **changes: Any) -> dict[str, Any]:
    """The valid spec ``kind`` with ``changes`` applied (a value of :data:`DROP` removes the key)."""
    out = copy.deepcopy(SPECS[kind])
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def resource(kind: str = "disk", **changes: Any) -> dict[str, Any]:
    """A whole ``OS`` resource around :func:`spec`."""
    return {
        "apiVersion": "upgrade.openeuler.org/v1alpha1",
        "kind": "OS",
        "metadata": {"name": "os-sample"},
        "spec": spec(kind, **changes),
    }


def error_fields(doc: Any) -> list[str]:
    return [e.field for e in check_os_document(doc, bare_spec=False).errors]


def warning_fields(doc: Any) -> list[str]:
    return [w.field for w in check_os_document(doc, bare_spec=False).warnings]
