"""The rollout's progress as markdown, for the Web UI's "current details" and the CLI."""

from __future__ import annotations

from models.rollout import NodeState, RolloutStatus

#: Longest node table shown; a 10,000-node rollout lists its running and failed nodes, then a count.
MAX_ROWS = 50
_ORDER = [NodeState.RUNNING, NodeState.ROLLING_BACK, NodeState.FAILED, NodeState.REFUSED]


def progress_markdown(status: RolloutStatus) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in sorted(status.counts.items())) or "no nodes"
    lines = [
        f"### {status.opstype} to `{status.target_version}`: {status.phase}",
        "",
        f"**Progress** {status.progress} · **maxunavailable** {status.max_unavailable} · {counts}",
    ]
    if status.pause_reason:
        lines += ["", f"**Paused:** {status.pause_reason}"]
    if status.rollback_reason:
        lines += ["", f"**Rollback:** {status.rollback_reason}"]
    rank = {state: i for i, state in enumerate(_ORDER)}
    shown = sorted(status.nodes, key=lambda e: (rank.get(e.state, len(_ORDER)), e.name))[:MAX_ROWS]
    lines += ["", "| node | state | from | detail |", "|---|---|---|---|"]
    for entry in shown:
        detail = entry.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {entry.name} | {entry.state} | {entry.from_version} | {detail} |")
    if len(status.nodes) > len(shown):
        lines.append(f"| … | {len(status.nodes) - len(shown)} more | | |")
    return "\n".join(lines)
