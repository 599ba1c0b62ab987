"""``kubeos-rollout dev`` (the whole stack until Ctrl-C) and ``kubeos-rollout demo`` (the seed's story, end to end)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from devstack.stack import BASE_VERSION, DOCKER_VERSION, IMAGE_VERSIONS, DevStack, StackError

NODE_COLUMNS = "NAME:.metadata.name,OS:.status.nodeInfo.osImage"
TERMINAL = {"Succeeded", "CompletedWithFailures", "RolledBack", "Superseded", "Invalid", "Failed", "Terminated"}


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="run the whole local stack until Ctrl-C (Temporal, Kubernetes API, hosts, ...)")
    dev.add_argument("--state-dir", type=Path, required=True, help="where state, logs, kubeconfig and env go")
    dev.add_argument("--nodes", type=int, default=3, help="simulated hosts (default 3)")
    dev.set_defaults(handler=lambda a: asyncio.run(_dev(a)))

    demo = sub.add_parser("demo", help="the seed's upgrade and rollback story on the embedded stack")
    demo.add_argument("--nodes", type=int, default=3, help="simulated hosts (default 3)")
    demo.add_argument("--imagetype", choices=("disk", "docker"), default="disk", help="upgrade image kind")
    demo.add_argument("--state-dir", type=Path, help="keep state and logs here (default: a temporary directory)")
    demo.set_defaults(handler=lambda a: asyncio.run(_demo(a)))


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _dev(args: argparse.Namespace) -> int:
    stack = DevStack(args.state_dir.resolve(), nodes=args.nodes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _say(f"starting the embedded stack in {stack.state_dir} ...")
    try:
        await stack.start()
    except StackError as exc:
        _say(f"error: {exc}")
        return 1
    env = stack.state_dir / "env"
    _say(f"""
The stack is up ({args.nodes} nodes on {BASE_VERSION}). Temporal Web UI: {stack.web_ui}

  set -a; . {env}; set +a
  kubectl get nodes -o custom-columns='{NODE_COLUMNS}'
  kubectl apply -f {stack.state_dir / "upgrade_v1alpha1_os.yaml"}
  kubectl get os
  kubectl apply -f {stack.state_dir / "rollback_v1alpha1_os.yaml"}
  temporal workflow list --query 'WorkflowType="ClusterRollout"'

Logs: {stack.logs}. Ctrl-C stops everything.""")
    status = 0
    try:
        while not stop.is_set():
            dead = stack.dead()
            if dead:
                _say(f"error: {', '.join(p.name for p in dead)} exited; see {stack.logs}")
                status = 1
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        _say("stopping the stack ...")
        await stack.stop()
    return status


# ------------------------------------------------------------------------------------------------- demo


class Demo:
    """Drives the stack the way the seed tells a user to: kubectl, an OS resource, and patience."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig), "TEMPORAL_ADDRESS": stack.temporal_address}
        self.started = time.monotonic()

    def kubectl(self, *args: str) -> str:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise StackError("kubectl is not installed (make deps installs it)")
        done = subprocess.run([kubectl, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def versions(self, title: str) -> dict[str, str]:
        out = self.kubectl("get", "nodes", "-o", f"custom-columns={NODE_COLUMNS}")
        _say(f"\n$ kubectl get nodes -o custom-columns='{NODE_COLUMNS}'    # {title}")
        _say(out.rstrip())
        rows = [line.split(None, 1) for line in out.splitlines()[1:] if line.strip()]
        return {name: version.strip() for name, version in rows}

    async def apply_and_follow(self, resource: Path, timeout: float = 600) -> str:
        _say(f"\n$ kubectl apply -f {resource.name}")
        _say(self.kubectl("apply", "-f", str(resource)).rstrip())
        generation = await self._generation()
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = await self._status()
            if status.get("observedGeneration") == generation:
                line = self._progress_line(status)
                if line != last:
                    _say(f"  [{time.monotonic() - self.started:6.1f}s] {line}")
                    last = line
                if status.get("phase") in TERMINAL:
                    return str(status.get("phase"))
            dead = self.stack.dead()
            if dead:
                raise StackError(f"{dead[0].name} exited; see {dead[0].log_path}")
            await asyncio.sleep(0.5)
        raise StackError(f"{resource.name} did not finish within {timeout:.0f}s")

    @staticmethod
    def _progress_line(status: dict[str, Any]) -> str:
        nodes = ", ".join(f"{n['name']} {n['state']}" for n in status.get("nodes", []))
        return f"{status.get('phase', '?'):<22} {status.get('progress', ''):>5}  {nodes}"

    async def _object(self) -> dict[str, Any]:
        from kubernetes import client as k8s

        from activities.kube import new_api_client
        from models.os_resource import GROUP, PLURAL, VERSION

        api = k8s.CustomObjectsApi(new_api_client(self.stack.kubeconfig))
        obj = await asyncio.to_thread(
            lambda: api.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "os-sample")
        )
        return cast(dict[str, Any], obj)

    async def _generation(self) -> int:
        return int((await self._object())["metadata"].get("generation", 1))

    async def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = (await self._object()).get("status") or {}
        return status


async def _demo(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as cleanup:
        if args.state_dir is None:
            state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="kubeos-demo-")))
        else:
            state_dir = args.state_dir.resolve()
        stack = DevStack(state_dir, nodes=args.nodes, with_registry=args.imagetype == "docker")
        _say(f"Starting the embedded stack ({args.nodes} simulated hosts on {BASE_VERSION}) in {state_dir} ...")
        began = time.monotonic()
        try:
            await stack.start()
            _say(f"Stack ready in {time.monotonic() - began:.0f}s. Temporal Web UI: {stack.web_ui}")
            return await _story(stack, args.imagetype)
        except StackError as exc:
            _say(f"\ndemo failed: {exc}")
            return 1
        finally:
            _say("\nStopping the stack ...")
            await stack.stop()
    return 1


async def _story(stack: DevStack, imagetype: str) -> int:
    demo = Demo(stack)
    target = DOCKER_VERSION if imagetype == "docker" else IMAGE_VERSIONS[0]
    upgrade = stack.state_dir / (
        "docker_upgrade_v1alpha1_os.yaml" if imagetype == "docker" else "upgrade_v1alpha1_os.yaml"
    )
    _say(f"\n--- The OS resource ({upgrade.name}) ---")
    _say(upgrade.read_text().rstrip())
    before = demo.versions("versions before")
    phase = await demo.apply_and_follow(upgrade)
    after = demo.versions("versions after the upgrade")
    if phase != "Succeeded" or set(after.values()) != {target}:
        _say(f"\nthe upgrade ended {phase}; nodes: {after}")
        return 1
    rollback = stack.state_dir / "rollback_v1alpha1_os.yaml"
    _say(f"\n--- Roll back to the previous version ({rollback.name}: opstype rollback, osversion {BASE_VERSION}) ---")
    phase = await demo.apply_and_follow(rollback)
    again = demo.versions("versions after the rollback")
    if phase != "Succeeded" or again != before:
        _say(f"\nthe rollback ended {phase}; nodes: {again}")
        return 1
    _say(
        f"\nThe story took {time.monotonic() - demo.started:.0f}s: {BASE_VERSION} -> {target} -> {BASE_VERSION} "
        f"on {len(after)} nodes. Rollouts stay visible in the Web UI while a stack runs (kubeos-rollout dev)."
    )
    return 0
