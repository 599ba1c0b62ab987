"""The host side: the node worker's configuration file and the inputs and outputs of the node activities.

The activity contract itself (names, errors, retry expectations) is written at the top of ``activities/node.py``.
Slots are always called ``A`` and ``B`` here; the GRUB menu entry of each is configurable.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.os_resource import DEFAULT_CERTS_DIR, ImageType, OpsType

SlotName = Literal["A", "B"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("A", "B")

# Where ``docker login`` keeps credentials as root; the original pulled with docker, which read them there.
DEFAULT_REGISTRY_AUTH_CONFIG = "/root/.docker/config.json"
MIB = 1024 * 1024
#: Seconds a trial boot may stay uncommitted when the caller gives no deadline (node_worker/trial.py), and at most.
DEFAULT_TRIAL_DEADLINE_SECONDS = 1800
MAX_TRIAL_DEADLINE_SECONDS = 7 * 24 * 3600


def other_slot(slot: SlotName) -> SlotName:
    return "B" if slot == "A" else "A"


def node_task_queue(node: str) -> str:
    """The task queue a node's worker polls: host activities are pinned to it."""
    return f"kubeos-node-{node}"


class HostErrorType(StrEnum):
    """``ApplicationError.type`` of the failures the node activities raise.

    Retryable ones are marked; every other type is raised with ``non_retryable=True``.
    """

    INVALID_INPUT = "InvalidInput"  # the spec cannot work on this host (missing field, bad checksum format)
    UNSAFE_ADDRESS = "UnsafeAddress"  # http without flagSafe, or a scheme other than http/https
    CERTIFICATE = "CertificateError"  # bad name, missing, unparsable, expired, key does not match cert
    DOWNLOAD_FAILED = "DownloadFailed"  # HTTP 4xx (non-retryable) ...
    DOWNLOAD_RETRY = "DownloadInterrupted"  # ... 5xx, connection lost, no progress: retryable, resumes
    CHECKSUM_MISMATCH = "ChecksumMismatch"  # the slot was invalidated
    IMAGE_TOO_LARGE = "ImageTooLarge"  # larger than the inactive slot
    NO_SPACE = "NoSpace"  # the staging directory is too full
    HOST_MISCONFIGURED = "HostMisconfigured"  # booted slot unknown, GRUB env unwritable, tool missing
    SLOT_NOT_VERIFIED = "SlotNotVerified"  # trial boot into a slot that does not hold the verified image
    WRONG_SLOT = "WrongSlot"  # commit of a slot that is not booted, trial boot of the booted slot
    TRIAL_EXPIRED = "TrialExpired"  # commit of a trial boot past its deadline: the host returns to its saved slot
    ROLLBACK_TARGET_MISMATCH = "RollbackTargetMismatch"  # the other slot does not hold osversion
    CONTAINER_IMAGE = "ContainerImageError"  # pull or root filesystem build failed (bad image, auth, ...)
    CONTAINER_IMAGE_UNAVAILABLE = "ContainerImageUnavailable"  # this node worker cannot build container images
    HOST_BUSY = "HostBusy"  # retryable: another disk operation holds the host lock
    NOT_REBOOTED = "HostNotRebooted"  # retryable: the boot id has not changed yet


RETRYABLE_ERROR_TYPES = frozenset({HostErrorType.DOWNLOAD_RETRY, HostErrorType.HOST_BUSY, HostErrorType.NOT_REBOOTED})


# ----------------------------------------------------------------------------------------- configuration


class SlotConfig(BaseModel):
    """Where one root slot lives and how the kernel command line names it.

    ``device`` is a block device (``/dev/sda2``) or, for simulated hosts and tests, a disk image file with the
    partition at ``offset`` bytes and ``size`` bytes long. The identities (``partuuid``, ``partlabel``,
    ``fslabel``, ``fsuuid``) let the booted slot be found from ``root=`` on the kernel command line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(min_length=1)
    offset: int = Field(default=0, ge=0)
    size: int | None = Field(default=None, gt=0, description="bytes; default: the device's or file's size")
    partuuid: str = ""
    partlabel: str = ""
    fslabel: str = ""
    fsuuid: str = ""
    grub_entry: str = Field(default="", description="the GRUB menu entry booting this slot; default: its name")


class HostConfig(BaseModel):
    """The node worker's configuration file (YAML or TOML); see ``deploy/node/host.example.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: dict[SlotName, SlotConfig]
    grubenv: str = Field(min_length=1, description="the GRUB environment block file")
    grub_editenv: str = Field(default="", description="the grub-editenv program; default: found on PATH")
    certs_dir: str = DEFAULT_CERTS_DIR
    registry_auth_config: str = Field(
        default=DEFAULT_REGISTRY_AUTH_CONFIG,
        description="docker-style config.json with registry credentials (auths) for container-image upgrades;"
        " a missing file means anonymous pulls",
    )
    staging_dir: str = "/var/lib/kubeos-rollout"
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"], min_length=1)
    kernel_cmdline: str = "/proc/cmdline"
    boot_id_file: str = "/proc/sys/kernel/random/boot_id"
    mounted_root: str | None = Field(
        default="/",
        description="where the booted slot is mounted (its os-release is read there); null: read it"
        " from the slot itself",
    )
    node_log: str = "/var/log/kubeos-rollout/node.log"
    syslog: bool = True
    syslog_address: str = "/dev/log"
    min_staging_free_bytes: int = Field(default=16 * MIB, ge=0)

    @model_validator(mode="after")
    def _both_slots(self) -> HostConfig:
        missing = [name for name in SLOT_NAMES if name not in self.slots]
        if missing:
            raise ValueError(f"slots: slot {' and '.join(missing)} missing (both A and B are required)")
        if self.slots["A"].model_dump(exclude={"grub_entry"}) == self.slots["B"].model_dump(exclude={"grub_entry"}):
            raise ValueError("slots: A and B describe the same place")
        if self.entry("A") == self.entry("B"):
            raise ValueError("slots: A and B have the same grub_entry")
        return self

    def entry(self, slot: SlotName) -> str:
        """The GRUB menu entry of ``slot``."""
        return self.slots[slot].grub_entry or slot


# ----------------------------------------------------------------------------------------- shared parts


class ImageSource(BaseModel):
    """What a host needs of an ``OS`` spec to check and stage an image (field names as in the spec)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    imagetype: ImageType = ""
    imageurl: str = ""
    checksum: str = ""
    flagSafe: bool = False
    mtls: bool = False
    cacert: str = ""
    clientcert: str = ""
    clientkey: str = ""
    dockerimage: str = ""
    osversion: str = ""

    @classmethod
    def from_spec(cls, spec: Any) -> ImageSource:
        """Take the image fields of an ``OSSpec`` (or any object or mapping with those names)."""
        if isinstance(spec, dict):
            return cls.model_validate(spec)
        return cls.model_validate({name: getattr(spec, name) for name in cls.model_fields if hasattr(spec, name)})


class OsRelease(BaseModel):
    """The fields of a slot's ``/etc/os-release`` that matter: kubelet reports ``PRETTY_NAME`` as osImage."""

    name: str = ""
    version_id: str = ""
    pretty_name: str = ""


class SlotState(BaseModel):
    slot: SlotName
    grub_entry: str
    booted: bool
    size: int
    os_release: OsRelease | None = Field(default=None, description="None when the slot holds no readable root")
    error: str = Field(default="", description="why os_release could not be read")
    staged_checksum: str = Field(default="", description="sha256 of the image staged here (stamp; a hint)")


class HostStatus(BaseModel):
    """What a host reports about itself (``host status``, ``host_report``)."""

    node: str = ""
    booted_slot: SlotName
    inactive_slot: SlotName
    slots: dict[SlotName, SlotState]
    grubenv: dict[str, str]
    saved_slot: SlotName | None = Field(description="the slot whose entry is saved_entry (None: unknown entry)")
    next_slot: SlotName | None = Field(description="the slot next_entry boots once (None: not set)")
    trial: bool = Field(description="this boot is a trial: the booted slot is not the saved entry")
    boot_id: str
    trial_deadline: float | None = Field(
        default=None,
        description="Unix time (the host's clock) by which the recorded trial boot must be committed, else the host"
        " returns to its saved slot by itself; None: no trial boot recorded",
    )


class StageProgress(BaseModel):
    """Heartbeat details of ``host_stage``; a retried attempt resumes from them."""

    phase: str = Field(description="verify-existing, rehash-prefix, download; container images: resolve, ...")
    slot: SlotName
    checksum: str
    source: str = Field(description="the image URL, or the container image")
    done: int = 0
    total: int | None = None
    written: int = Field(default=0, description="bytes of the image already in the slot (where a retry resumes)")
    boot_id: str = Field(default="", description="resume only within one boot: page cache is lost on a crash")


# ----------------------------------------------------------------------------------------- activity I/O


class HostPreflightInput(BaseModel):
    source: ImageSource
    opstype: OpsType = "upgrade"


class HostPreflightOutput(BaseModel):
    status: HostStatus
    target_slot: SlotName = Field(description="the slot the operation will boot into")
    already_staged: bool = Field(
        description="the target slot's stamp names this image: the disk image's checksum, or the container image's"
        " digest given as checksum (a hint: the stage verifies the slot's bytes)"
    )


class HostStageInput(BaseModel):
    source: ImageSource


class HostStageOutput(BaseModel):
    slot: SlotName
    checksum: str
    size: int
    reused: bool = Field(description="the slot already held this verified image: nothing was fetched")
    resumed_at: int = Field(default=0, description="bytes already in the slot when this attempt started")
    os_release: OsRelease | None = None


class HostTrialBootInput(BaseModel):
    target_slot: SlotName
    osversion: str = Field(min_length=1, description="PRETTY_NAME the target slot must hold")
    checksum: str = Field(default="", description="when set, the slot must hold this staged, verified image")
    deadline_seconds: int = Field(
        default=DEFAULT_TRIAL_DEADLINE_SECONDS,
        ge=1,
        le=MAX_TRIAL_DEADLINE_SECONDS,
        description="seconds from now within which the trial must be committed; after that the host undoes it",
    )


class HostTrialBootOutput(BaseModel):
    target_slot: SlotName
    booted_slot: SlotName
    grubenv: dict[str, str]


class HostRebootInput(BaseModel):
    reason: str = ""


class HostRebootOutput(BaseModel):
    boot_id: str = Field(description="the boot id before the reboot: pass it to host_await_reboot")
    command: list[str]


class HostReportInput(BaseModel):
    pass


class HostReportOutput(BaseModel):
    status: HostStatus


class HostAwaitRebootInput(BaseModel):
    previous_boot_id: str = Field(min_length=1)


class HostAwaitRebootOutput(BaseModel):
    status: HostStatus


class HostCommitInput(BaseModel):
    slot: SlotName
    osversion: str = Field(default="", description="when set, the booted slot must hold it")


class HostCommitOutput(BaseModel):
    saved_slot: SlotName
    grubenv: dict[str, str]


class HostSwitchBackInput(BaseModel):
    slot: SlotName = Field(description="the slot to make the saved entry again (the one that ran before)")


class HostSwitchBackOutput(BaseModel):
    saved_slot: SlotName
    booted_slot: SlotName
    reboot_needed: bool = Field(description="the host runs another slot: reboot to be back on the saved one")
    grubenv: dict[str, str]


class HostPrepareRollbackInput(BaseModel):
    osversion: str = Field(min_length=1)


class HostPrepareRollbackOutput(BaseModel):
    target_slot: SlotName
    booted_slot: SlotName
    os_release: OsRelease


# ----------------------------------------------------------------------------------------- simulated machine


class SimMachineState(BaseModel):
    """``DIR/machine.json`` of a simulated host (``host sim-run``), read by the kubelet stand-in.

    ``running``: the machine is up and its node worker started; ``pretty_name``: PRETTY_NAME of the booted slot
    (the node's osImage); ``last_boot_failed_slot``: the slot the last boot tried first and could not boot.
    """

    model_config = ConfigDict(extra="forbid")

    running: bool
    booted_slot: SlotName
    pretty_name: str
    boot_id: str
    boots: int = Field(ge=0)
    last_boot_failed_slot: SlotName | None = None
