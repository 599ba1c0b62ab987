"""The deadline of a trial boot, kept on the host: a trial nobody commits in time is undone by the host itself.

As RAUC and Mender do: the workflow that asked for a trial boot may have given up on it (the host hung at its
reboot and came back after the boot timeout), and a host left on a slot nobody committed runs the new version
until its next reboot quietly returns it to the old one. So ``host_trial_boot`` records a deadline here; the node
worker undoes an expired trial when it starts and periodically after (``HostAgent.end_expired_trial``), and
``host_commit`` refuses a trial past its deadline, so the host and the workflow agree on who won.

The deadline is wall-clock time (``time.time()``): it has to hold across the reboot, and neither monotonic time
nor the boot id carries a duration from one boot to the next. Clock jumps therefore count. A clock that jumps
forward (an RTC set ahead, corrected by NTP) undoes a trial early: the commit is refused and the workflow reports
the node failed, back on its committed slot, which is safe. A clock that jumps backward (an RTC reset at boot,
before NTP has synchronised) delays the undo until the clock passes the deadline again; meanwhile a rollout that
finds the node in an uncommitted trial undoes it itself (``workflows/node_upgrade.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class TrialRecord:
    slot: str
    osversion: str
    set_at: float  # Unix time the trial boot was asked for
    deadline: float  # Unix time by which it must be committed

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    @property
    def deadline_text(self) -> str:
        return datetime.fromtimestamp(self.deadline, UTC).isoformat(timespec="seconds")


class TrialStore:
    """``<staging_dir>/trial.json``: the trial boot asked for last, until it is committed, switched back or undone."""

    def __init__(self, staging_dir: str | Path) -> None:
        self.path = Path(staging_dir) / "trial.json"

    def load(self) -> TrialRecord | None:
        """The record, or None when there is none or it cannot be read (it is replaced atomically, so only damage
        makes it unreadable; such a trial is left to the next rollout, which undoes any uncommitted trial)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            fields = (str(data["slot"]), str(data["osversion"]), float(data["set_at"]), float(data["deadline"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return TrialRecord(*fields)

    def save(self, record: TrialRecord) -> None:
        """Written and synced before ``next_entry`` is set: a power cut must not leave a trial without a deadline."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
