"""The host operations behind the node activities and the ``host`` commands.

One :class:`HostAgent` per host configuration. Every operation that writes a slot or the GRUB environment holds the
host lock (a ``flock`` in the staging directory), so the worker and an operator's ``host stage`` never write at the
same time; a second writer is told "HostBusy" and may retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from models.host import (
    DEFAULT_TRIAL_DEADLINE_SECONDS,
    SLOT_NAMES,
    HostCommitOutput,
    HostConfig,
    HostErrorType,
    HostPreflightOutput,
    HostPrepareRollbackOutput,
    HostRebootOutput,
    HostStageOutput,
    HostStatus,
    HostSwitchBackOutput,
    HostTrialBootOutput,
    ImageSource,
    OpsType,
    OsRelease,
    SlotName,
    SlotState,
    StageProgress,
    other_slot,
)
from node_worker import boot
from node_worker.errors import HostError
from node_worker.files import file_chunks
from node_worker.grubenv import GrubEnv, default_slot, entry_slot
from node_worker.http_source import check_url_policy, download_into
from node_worker.nodelog import NodeLog
from node_worker.osrelease import (
    OsReleaseUnreadable,
    read_root_os_release,
    read_slot_fs_identity,
    read_slot_os_release,
)
from node_worker.slots import ByteProgress, Slot, resolve_slot
from node_worker.tls import TlsFiles, check_tls_files, ssl_context
from node_worker.trial import TrialRecord, TrialStore
from node_worker.writer import SlotWriter, StampStore, write_stream

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
StageReporter = Callable[[StageProgress], None]


def _normalise_checksum(checksum: str) -> str:
    bare = checksum.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(bare):
        raise HostError(
            HostErrorType.INVALID_INPUT, f"checksum: must be a SHA-256 digest of 64 hex digits, got {checksum!r}"
        )
    return bare


class HostAgent:
    def __init__(
        self,
        config: HostConfig,
        node: str = "",
        log: NodeLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.node = node
        self.log = log or NodeLog(config.node_log, node)
        self.grub = GrubEnv(config.grubenv, config.grub_editenv)
        self.stamps = StampStore(config.staging_dir)
        self.trials = TrialStore(config.staging_dir)
        #: Wall clock for trial deadlines (node_worker/trial.py says why wall clock); tests pass their own.
        self.clock = clock

    # ------------------------------------------------------------------------------------------- reading

    def slot(self, name: SlotName) -> Slot:
        return resolve_slot(self.config, name)

    def booted_slot(self) -> SlotName:
        return boot.booted_slot(self.config)

    def boot_id(self) -> str:
        return boot.boot_id(self.config)

    def os_release(self, slot: Slot, booted: bool) -> OsRelease:
        """The slot's os-release: from the mounted root for the booted slot when configured, else from its bytes."""
        if booted and self.config.mounted_root is not None:
            return read_root_os_release(self.config.mounted_root)
        return read_slot_os_release(slot)

    def slot_state(self, name: SlotName, booted: SlotName) -> SlotState:
        slot = self.slot(name)
        stamp = self.stamps.load(slot)
        state = SlotState(
            slot=name,
            grub_entry=self.config.entry(name),
            booted=name == booted,
            size=slot.size,
            staged_checksum=stamp.checksum if stamp else "",
        )
        try:
            state.os_release = self.os_release(slot, name == booted)
        except OsReleaseUnreadable as exc:
            state.error = str(exc)
        return state

    def status(self) -> HostStatus:
        booted = self.booted_slot()
        env = self.grub.read()
        saved = entry_slot(self.config, env.get("saved_entry", ""))
        next_ = entry_slot(self.config, env.get("next_entry", "")) if env.get("next_entry") else None
        record = self.trials.load()
        return HostStatus(
            node=self.node,
            booted_slot=booted,
            inactive_slot=other_slot(booted),
            slots={name: self.slot_state(name, booted) for name in SLOT_NAMES},
            grubenv=env,
            saved_slot=saved,
            next_slot=next_,
            trial=booted != default_slot(self.config, env),
            boot_id=self.boot_id(),
            trial_deadline=record.deadline if record else None,
        )

    # ------------------------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold the host lock for a disk or boot-entry operation, or fail at once with HostBusy."""
        staging = Path(self.config.staging_dir)
        try:
            staging.mkdir(parents=True, exist_ok=True)
            fd = os.open(staging / "host.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HostError(
                HostErrorType.HOST_MISCONFIGURED, f"staging directory {staging} is not usable: {exc}"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise HostError(
                    HostErrorType.HOST_BUSY, f"the host is processing another request; {what} must wait"
                ) from exc
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------------------- preflight

    def _check_source(self, source: ImageSource) -> TlsFiles | None:
        """The upgrade source is usable here: URL policy, checksum format, certificates. Returns TLS files."""
        if source.imagetype == "disk":
            _normalise_checksum(source.checksum)
            if check_url_policy(source, self.log) == "https":
                return check_tls_files(source, self.config.certs_dir)
            return None
        if source.imagetype in ("docker", "containerd"):
            if not source.dockerimage:
                raise HostError(HostErrorType.INVALID_INPUT, "dockerimage: is required for a container-image upgrade")
            if source.checksum:
                _normalise_checksum(source.checksum)
            if source.cacert:
                return check_tls_files(source, self.config.certs_dir)
            return None
        raise HostError(
            HostErrorType.INVALID_INPUT,
            f"imagetype: must be disk, docker or containerd for an upgrade, got {source.imagetype!r}",
        )

    def _check_staging_space(self) -> None:
        staging = Path(self.config.staging_dir)
        staging.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(staging).free
        if free < self.config.min_staging_free_bytes:
            raise HostError(
                HostErrorType.NO_SPACE,
                f"Space is not enough in {staging}: {free} bytes free, {self.config.min_staging_free_bytes} needed",
            )

    def preflight(self, source: ImageSource, opstype: OpsType = "upgrade") -> HostPreflightOutput:
        """Everything that can be checked before anything is written; raises HostError naming the problem."""
        status = self.status()
        target = other_slot(status.booted_slot)
        running = status.slots[status.booted_slot].os_release
        if source.osversion and not status.trial and running is not None and running.pretty_name == source.osversion:
            # Nothing will be written: the workflow reports the node up to date. Checking the source, space or a
            # rollback target here could only fail a node that needs nothing.
            self.log.info(f"preflight: slot {status.booted_slot} runs {source.osversion} and is committed")
            return HostPreflightOutput(status=status, target_slot=target, already_staged=False)
        self.grub.check_writable()
        self._check_staging_space()
        if opstype == "rollback":
            self._rollback_target(status.booted_slot, source.osversion)
            return HostPreflightOutput(status=status, target_slot=target, already_staged=False)
        self._check_source(source)
        already = self._staged_hint(source, self.slot(target))
        self.log.info(
            f"preflight ok: booted slot {status.booted_slot}, {source.imagetype} image for {target}"
            f" ({source.osversion or 'no osversion'})"
        )
        return HostPreflightOutput(status=status, target_slot=target, already_staged=already)

    def _staged_hint(self, source: ImageSource, slot: Slot) -> bool:
        """Whether the slot's stamp names this image (a hint: the stage verifies the bytes). A container image
        is named by its digest, which the spec gives only in ``checksum``; without one only the stage can tell."""
        stamp = self.stamps.load(slot)
        if stamp is None or not source.checksum:
            return False
        checksum = _normalise_checksum(source.checksum)
        if source.imagetype == "disk":
            return stamp.checksum == checksum
        return f"sha256:{checksum}" in {stamp.manifest_digest, stamp.index_digest}

    # ------------------------------------------------------------------------------------------- stage

    def stage(
        self, source: ImageSource, report: StageReporter | None = None, resume: StageProgress | None = None
    ) -> HostStageOutput:
        """Write the image into the inactive slot and verify it; never touches the boot entries.

        ``resume`` (the last heartbeat of a failed attempt) lets a download continue where it stopped, within the
        same boot. A slot that already holds the verified image is kept as it is.
        """
        with self.exclusive("staging"):
            tls = self._check_source(source)
            booted = self.booted_slot()
            slot = self.slot(other_slot(booted))
            if source.imagetype == "disk":
                result = self._stage_disk(source, slot, tls, report, resume)
            else:
                result = self._stage_container(source, slot, report)
            try:
                result.os_release = read_slot_os_release(slot)
            except OsReleaseUnreadable as exc:
                self.log.warning(f"staged image in slot {slot.name} has no readable os-release: {exc}")
            self.log.info(
                f"staged slot {slot.name}: sha256 {result.checksum}, {result.size} bytes"
                + (" (already there)" if result.reused else "")
            )
            return result

    def _reporter(
        self, report: StageReporter | None, slot: Slot, checksum: str, source: str, boot_id: str
    ) -> Callable[[str, int, int | None, int], None]:
        def emit(phase: str, done: int, total: int | None, written: int) -> None:
            if report is not None:
                report(
                    StageProgress(
                        phase=phase,
                        slot=slot.name,
                        checksum=checksum,
                        source=source,
                        done=done,
                        total=total,
                        written=written,
                        boot_id=boot_id,
                    )
                )

        return emit

    def _stage_disk(
        self,
        source: ImageSource,
        slot: Slot,
        tls: TlsFiles | None,
        report: StageReporter | None,
        resume: StageProgress | None,
    ) -> HostStageOutput:
        checksum = _normalise_checksum(source.checksum)
        boot_id = self.boot_id()
        emit = self._reporter(report, slot, checksum, source.imageurl, boot_id)
        if self.stamps.verify(slot, checksum, lambda d, t: emit("verify-existing", d, t, 0)):
            stamp = self.stamps.load(slot)
            assert stamp is not None
            self.log.info(f"slot {slot.name} already holds the verified image {checksum}: not downloading")
            return HostStageOutput(slot=slot.name, checksum=checksum, size=stamp.size, reused=True)
        ctx = ssl_context(tls) if tls is not None else None
        resumable = (
            resume is not None
            and resume.slot == slot.name
            and resume.checksum == checksum
            and resume.source == source.imageurl
            and resume.boot_id == boot_id
            and 0 < resume.written <= slot.size
        )
        self.log.info(f"staging {source.imageurl} into {slot.describe()}")
        with SlotWriter(slot, self.stamps) as writer:
            resumed_at = 0
            if resumable and resume is not None:
                prefix = resume.written
                writer.resume_after(prefix, lambda d, t: emit("rehash-prefix", d, t, prefix))
                resumed_at = prefix
                self.log.info(f"resuming the download of {source.imageurl} at byte {prefix}")
            try:
                download_into(source, writer, ctx, self.log, lambda d, t: emit("download", d, t, writer.position))
                calculated = writer.finish(checksum)
            except HostError as exc:
                if not exc.retryable and writer.touched:
                    writer.invalidate()
                    self.log.error(f"slot {slot.name} invalidated: {exc}")
                else:
                    self.log.warning(f"staging interrupted at byte {writer.position}: {exc}")
                raise
            return HostStageOutput(
                slot=slot.name, checksum=calculated, size=writer.position, reused=False, resumed_at=resumed_at
            )

    def _stage_container(self, source: ImageSource, slot: Slot, report: StageReporter | None) -> HostStageOutput:
        """Container images: the registry pull builds a root filesystem image file, which the same verified
        writer puts into the slot. A slot that holds a verified build of the same image (manifest digest) is
        kept: nothing is pulled or built again."""
        try:
            from node_worker import oci_rootfs
        except ImportError as exc:
            raise HostError(
                HostErrorType.CONTAINER_IMAGE_UNAVAILABLE,
                f"container-image upgrades not available on this node worker: {exc}",
            ) from exc
        emit = self._reporter(report, slot, source.checksum, source.dockerimage, self.boot_id())
        certs_dir = Path(self.config.certs_dir)
        auth_config = Path(self.config.registry_auth_config)
        # Failures below are HostErrors already, each with the activity error type (registry.ContainerImageError).
        emit("resolve", 0, 1, 0)
        image = oci_rootfs.resolve_source_image(source, certs_dir=certs_dir, auth_config=auth_config)
        emit("resolve", 1, 1, 0)
        stamp = self.stamps.verify_container_image(
            slot, image.manifest_digest, lambda d, t: emit("verify-existing", d, t, 0)
        )
        if stamp is not None:
            try:
                release = read_slot_os_release(slot)
            except OsReleaseUnreadable:
                pass  # cannot tell what it holds: build it again
            else:
                oci_rootfs.require_osversion(release, source.osversion, f"slot {slot.name} ({image.manifest_digest})")
                self.log.info(f"slot {slot.name} already holds a verified build of {image.manifest_digest}")
                return HostStageOutput(slot=slot.name, checksum=stamp.checksum, size=stamp.size, reused=True)
        label, fs_uuid = self._filesystem_identity(slot)
        self.log.info(
            f"building the root filesystem of {source.dockerimage} ({image.manifest_digest}) for {slot.describe()},"
            f" label {label}, UUID {fs_uuid or '(new)'}"
        )
        # An image whose PRETTY_NAME is not osversion is refused by the build, before the slot is touched.
        built = oci_rootfs.build_rootfs_image(
            source,
            staging_dir=Path(self.config.staging_dir),
            slot_size=slot.size,
            certs_dir=certs_dir,
            auth_config=auth_config,
            progress=lambda phase, done, total: emit(phase, done, total, 0),
            label=label,
            fs_uuid=fs_uuid,
            image=image,
        )
        with built:
            sha, size = write_stream(
                slot,
                self.stamps,
                file_chunks(built.path),
                built.sha256,
                lambda d, t: emit("write", d, t, d),
                total=built.size,
                manifest_digest=built.manifest_digest,
                index_digest=image.index_digest or "",
            )
        return HostStageOutput(slot=slot.name, checksum=sha, size=size, reused=False)

    def _filesystem_identity(self, slot: Slot) -> tuple[str, str | None]:
        """Label and UUID (None: a new one) for a filesystem built for ``slot``.

        The booted slot may be found by ``root=LABEL=``/``UUID=`` (GRUB's menu entry, then ``boot.booted_slot``),
        so a built filesystem carries the slot's configured identity; failing that, the identity the slot's
        filesystem has now (its GRUB entry may name it); failing that (an empty slot), ROOT-<slot>.
        """
        current = read_slot_fs_identity(slot)
        label = slot.config.fslabel or (current.label if current else "") or f"ROOT-{slot.name}"
        fs_uuid = slot.config.fsuuid or (current.uuid if current else "")
        return label, fs_uuid or None

    # ------------------------------------------------------------------------------------------- boot entries

    def _require_bootable(self, slot: Slot, osversion: str, booted: bool) -> OsRelease:
        try:
            release = self.os_release(slot, booted)
        except OsReleaseUnreadable as exc:
            raise HostError(HostErrorType.SLOT_NOT_VERIFIED, f"refusing to boot slot {slot.name}: {exc}") from exc
        if osversion and release.pretty_name != osversion:
            raise HostError(
                HostErrorType.SLOT_NOT_VERIFIED,
                f"slot {slot.name} holds {release.pretty_name!r}, not osversion {osversion!r}",
            )
        return release

    def trial_boot(
        self,
        target: SlotName,
        osversion: str,
        checksum: str = "",
        report: ByteProgress | None = None,
        deadline_seconds: float = DEFAULT_TRIAL_DEADLINE_SECONDS,
    ) -> HostTrialBootOutput:
        """Boot ``target`` once at the next reboot (``next_entry``); ``saved_entry`` stays on the running slot.

        The trial must be committed within ``deadline_seconds``, else the host undoes it (:meth:`end_expired_trial`).
        """
        with self.exclusive("trial boot"):
            booted = self.booted_slot()
            if target == booted:
                raise HostError(HostErrorType.WRONG_SLOT, f"slot {target} is the running slot: nothing to try")
            slot = self.slot(target)
            if checksum and not self.stamps.verify(slot, _normalise_checksum(checksum), report):
                raise HostError(
                    HostErrorType.SLOT_NOT_VERIFIED,
                    f"slot {target} does not hold the verified image {checksum}: stage it first",
                )
            self._require_bootable(slot, osversion, booted=False)
            now = self.clock()
            record = TrialRecord(slot=target, osversion=osversion, set_at=now, deadline=now + deadline_seconds)
            self.trials.save(record)  # before next_entry: no trial without a deadline
            self.grub.set(next_entry=self.config.entry(target))
            env = self.grub.read()
            self.log.info(
                f"trial boot: next boot (once) into slot {target} ({osversion}); saved_entry unchanged; "
                f"to be committed by {record.deadline_text}, else the host returns to slot {booted}"
            )
            return HostTrialBootOutput(target_slot=target, booted_slot=booted, grubenv=env)

    def commit(self, slot: SlotName, osversion: str = "") -> HostCommitOutput:
        """Make the running slot the default: ``saved_entry`` = slot, ``next_entry`` cleared.

        A trial boot past its deadline is refused: the host is returning (or has decided to return) to its saved
        slot, and committing now would contradict what it tells everyone else.
        """
        with self.exclusive("commit"):
            booted = self.booted_slot()
            if slot != booted:
                raise HostError(
                    HostErrorType.WRONG_SLOT, f"refusing to commit slot {slot}: the host runs slot {booted}"
                )
            saved = default_slot(self.config, self.grub.read())
            record = self.trials.load()
            if booted != saved and record is not None and record.expired(self.clock()):
                raise HostError(
                    HostErrorType.TRIAL_EXPIRED,
                    f"refusing to commit slot {slot}: its trial boot ({record.osversion}) was not committed by its "
                    f"deadline {record.deadline_text}; the host returns to slot {saved} by itself",
                )
            self._require_bootable(self.slot(slot), osversion, booted=True)
            self.grub.set(saved_entry=self.config.entry(slot))
            self.grub.unset("next_entry")
            self.trials.clear()
            self.log.info(f"committed slot {slot}: it is the default boot entry now")
            return HostCommitOutput(saved_slot=slot, grubenv=self.grub.read())

    def switch_back(self, slot: SlotName) -> HostSwitchBackOutput:
        """Make ``slot`` (the one that ran before) the default again and drop any pending one-time boot."""
        with self.exclusive("switch back"):
            booted = self.booted_slot()
            self._require_bootable(self.slot(slot), "", booted=slot == booted)
            self.grub.set(saved_entry=self.config.entry(slot))
            self.grub.unset("next_entry")
            self.trials.clear()
            self.log.info(f"switched back: slot {slot} is the default boot entry (running {booted})")
            return HostSwitchBackOutput(
                saved_slot=slot, booted_slot=booted, reboot_needed=booted != slot, grubenv=self.grub.read()
            )

    def end_expired_trial(self) -> bool:
        """Undo a trial boot nobody committed by its deadline; True when the host must now reboot into its saved
        (committed) slot, which the caller does.

        The node worker calls this when it starts and periodically. Without an expired record it only reads one
        small file. A trial not booted yet loses its one-time ``next_entry``; a running one keeps its record until
        the reboot, so that ``host_commit`` goes on refusing it, and the first check after the reboot drops it.
        """
        record = self.trials.load()
        if record is None or not record.expired(self.clock()):
            return False
        with self.exclusive("undoing an expired trial boot"):
            env = self.grub.read()
            saved = default_slot(self.config, env)
            booted = self.booted_slot()
            if env.get("next_entry"):
                self.grub.unset("next_entry")
            if booted == saved:
                self.trials.clear()
                if env.get("next_entry"):
                    self.log.warning(
                        f"trial boot of slot {record.slot} ({record.osversion}) never happened by its deadline "
                        f"{record.deadline_text}: its one-time boot entry is removed; slot {saved} stays the default"
                    )
                return False
            self.log.warning(
                f"trial boot of slot {booted} ({record.osversion}) was not committed by its deadline "
                f"{record.deadline_text}: rebooting into the committed slot {saved}"
            )
            return True

    def _rollback_target(self, booted: SlotName, osversion: str) -> OsRelease:
        other = self.slot(other_slot(booted))
        if not osversion:
            raise HostError(HostErrorType.INVALID_INPUT, "osversion: is required for a rollback")
        try:
            release = read_slot_os_release(other)
        except OsReleaseUnreadable as exc:
            raise HostError(
                HostErrorType.ROLLBACK_TARGET_MISMATCH, f"cannot roll back to {osversion!r}: {exc}"
            ) from exc
        if release.pretty_name != osversion:
            raise HostError(
                HostErrorType.ROLLBACK_TARGET_MISMATCH,
                f"cannot roll back to {osversion!r}: slot {other.name} holds {release.pretty_name!r}",
            )
        return release

    def prepare_rollback(self, osversion: str) -> HostPrepareRollbackOutput:
        """Check that the other slot holds ``osversion``; the rollback then trial-boots it like an upgrade."""
        booted = self.booted_slot()
        release = self._rollback_target(booted, osversion)
        self.log.info(f"rollback to {osversion!r}: slot {other_slot(booted)} holds it")
        return HostPrepareRollbackOutput(target_slot=other_slot(booted), booted_slot=booted, os_release=release)

    # ------------------------------------------------------------------------------------------- reboot

    def prepare_reboot(self, reason: str = "") -> HostRebootOutput:
        """Flush the disks and note the boot id; the caller runs :meth:`run_reboot_command` once it is safe."""
        os.sync()
        current = self.boot_id()
        self.log.info(f"rebooting{f' ({reason})' if reason else ''}: {' '.join(self.config.reboot_command)}")
        return HostRebootOutput(boot_id=current, command=list(self.config.reboot_command))

    def run_reboot_command(self) -> bool:
        os.sync()
        try:
            proc = subprocess.run(self.config.reboot_command, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self.log.error(f"reboot command failed: {exc}")
            return False
        if proc.returncode != 0:
            self.log.error(f"reboot command exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
            return False
        return True

    def await_reboot(self, previous_boot_id: str) -> HostStatus:
        """The host's status once it has rebooted; HostNotRebooted (retryable) while the boot id is unchanged."""
        current = self.boot_id()
        if current == previous_boot_id:
            raise HostError(HostErrorType.NOT_REBOOTED, f"host has not rebooted yet (boot id {current})")
        return self.status()
