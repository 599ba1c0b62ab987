"""A Kubernetes API server for one machine: kmock's ``KubernetesEmulator`` with the gaps a rollout needs filled.

kmock gives the HTTP server plumbing, request recording, reactions (tests can still inject faults with
``emulator.handler['post', kmock.subresource('eviction')] << 500``), API discovery, ``Status`` error bodies
and the object store with history. Its own write semantics are too naive for the official client and
kubectl (no selectors, no metadata, status mixed into the object, no eviction), so every API request is
answered by ``devstack.kube_store.Store`` through one reaction at a priority just above kmock's fallbacks.

Served: the built-in kinds of ``devstack.kube_resources.SERVED_GROUPS`` and the project's ``OS`` CRD (plus
any CRD created through the API); get/list (label and field selectors, ``Table`` for kubectl's default
output, see ``devstack.kube_tables``), watch (resumable from a resourceVersion, ``timeoutSeconds``, and the
watch-list protocol of ``sendInitialEvents``), create (201; JSON bodies, and the protobuf ones kubectl sends
for built-in kinds, see ``devstack.kube_protobuf``), PUT, PATCH (JSON, merge and strategic merge), DELETE
(finalizers), ``/status``, ``pods/eviction`` with PodDisruptionBudgets.

Programmatic use::

    async with KubeEmulator() as kube:
        kube.write_kubeconfig(path)
        ...
        assert kube.max_cordoned() <= 2

As a process (the dev stack): ``python -m devstack.kube_emulator --port P --kubeconfig FILE``, until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp.web
import kmock
import yaml

from devstack.kube_protobuf import MEDIA_TYPE as PROTOBUF
from devstack.kube_protobuf import ProtobufError, decode_object
from devstack.kube_resources import (
    Kind,
    builtin_kinds,
    default_crds,
    discovery_entries,
    load_crd_documents,
    openapi_v3_group,
    openapi_v3_root,
)
from devstack.kube_store import DEFAULT_NAMESPACES, Change, CordonTransition, Store, api_error
from devstack.kube_tables import as_table

# Kept bounded so a dev stack running for days does not grow without limit (kmock records every request).
_KEEP_REQUESTS = 5000
_KEEP_ERRORS = 100
_WATCH_POLL_SECONDS = 1.0
_OPENAPI_V3 = "/openapi/v3"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class ApiPath:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_api_path(path: str) -> ApiPath | None:
    """Split a resource URL; None for anything else (discovery, /version, /openapi)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    # /namespaces/NS/PLURAL/... is a namespaced resource, but /namespaces and /namespaces/NS[/status|finalize]
    # are the Namespace kind itself (kmock's own splitter trips over exactly this).
    if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    return ApiPath(
        group=group,
        version=version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def _header(request: kmock.Request, name: str) -> str:
    wanted = name.lower()
    return next((str(v) for k, v in request.headers.items() if k.lower() == wanted), "")


def _decode_body(body: bytes, protobuf: bool) -> Any:
    """The request body as JSON data: None when it is empty or not JSON (the store names what it lacks)."""
    if protobuf:
        try:
            return decode_object(body)
        except ProtobufError as e:
            raise api_error(415, "UnsupportedMediaType", f"cannot read the protobuf body: {e}") from e
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


class ApiServer(kmock.KubernetesEmulator):
    """The kmock handler with the emulated API behind one reaction."""

    def __init__(self, crds: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__()
        self.store = Store(self.objects)
        self.stopping = False
        self.resources.clear()  # serve only what the store knows, so discovery matches reality
        for kind in builtin_kinds():
            self._serve_kind(kind)
        namespaces = self.store.kind("", "v1", "namespaces")
        for ns in DEFAULT_NAMESPACES:
            self.store.create(namespaces, None, {"metadata": {"name": ns}})
        for crd in crds:
            self.install_crd(crd)
        self._reaction: kmock.Reaction = (self**-1)[self._is_api_request] << self._serve  # type: ignore[assignment]

    def _serve_kind(self, kind: Kind) -> None:
        self.store.register(kind)
        self.resources[kind.resource] = kind.info()

    def install_crd(self, crd: Mapping[str, Any]) -> list[Kind]:
        kinds = self.store.install_crd(crd)
        for kind in kinds:
            self.resources[kind.resource] = kind.info()
        return kinds

    # kmock's request parser raises on the Namespace collection URL (/api/v1/namespaces: "namespaces" there is
    # the resource, not a scope) and on bodies that are not UTF-8 (the protobuf kubectl sends for built-in
    # kinds). Parse such requests here; all others go through kmock as is.
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        protobuf = raw_request.content_type == PROTOBUF
        if raw_request.path.rstrip("/") != "/api/v1/namespaces" and not protobuf:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = _decode_body(body, protobuf)
        except kmock.KubernetesError as e:
            return await self._render_error(e)
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
            text=json.dumps(data) if protobuf else body.decode("utf-8", "replace"),
            data=data,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as e:
            if self._errors:
                self._errors[-1].append(e)
            return await self._render_error(e)

    # kmock's discovery names the core group "/v1" and lists every subresource with the parent's verbs and
    # short names, which kubectl rejects or warns about; answer /api/v1 and /apis/G/V from the served kinds.
    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        parts = [p for p in request.url.path.split("/") if p]
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        kinds = sorted(
            (k for k in self.store.kinds.values() if (k.group, k.version) == (group, version)), key=lambda k: k.plural
        )
        if not kinds:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for kind in kinds for entry in discovery_entries(kind)],
        }

    # kmock's KubernetesEmulator writes naively to its store before any reaction runs; skip that layer and
    # dispatch straight to the reactions (ours included) as kmock's plain handler does.
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self._trim_records()
        return await super(kmock.KubernetesEmulator, self)._handle(request)

    def _trim_records(self) -> None:
        for records in (self._requests, self._reaction._requests):
            if len(records) > _KEEP_REQUESTS:
                del records[: len(records) - _KEEP_REQUESTS // 2]
        if self._errors and len(self._errors[-1]) > _KEEP_ERRORS:
            del self._errors[-1][:-_KEEP_ERRORS]

    @staticmethod
    def _is_api_request(request: kmock.Request) -> bool:
        path = request.url.path
        return parse_api_path(path) is not None or path.startswith(_OPENAPI_V3)

    # --------------------------------------------------------------------------------------------- serving

    @staticmethod
    def _reply(payload: Any, status: int = 200) -> kmock.Response:
        # Always a full Response: kmock keeps the status of a Response returned by a callable on the reaction.
        return kmock.Response(status=status, payload=payload, headers={"Content-Type": "application/json"})

    async def _serve(self, request: kmock.Request) -> kmock.Response:
        if request.url.path.startswith(_OPENAPI_V3):
            return self._reply(self._openapi(request.url.path))
        path = parse_api_path(request.url.path)
        assert path is not None  # guaranteed by _is_api_request
        store = self.store
        kind = store.kind(path.group, path.version, path.plural)
        if path.namespace is not None and not kind.namespaced:
            raise api_error(404, "NotFound", f"{kind.plural} is not namespaced", kind)
        namespace = path.namespace if kind.namespaced else None
        params = request.params
        method = str(request.method.value).upper()
        dry_run = bool(params.get("dryRun"))

        if method == "GET":
            if _flag(params.get("watch")):
                _check_watch_list(params, kind)
                return self._reply(self._watch(request, kind, namespace, path.name))
            if path.name is None:
                items = store.list_objects(
                    kind, namespace, params.get("labelSelector", ""), params.get("fieldSelector", "")
                )
                return self._reply(self._listing(request, kind, items))
            if path.subresource not in (None, "status"):
                raise api_error(404, "NotFound", f"{kind.plural}/{path.subresource} is not served", kind)
            obj = store.get(kind, namespace, path.name)
            return self._reply(self._listing(request, kind, [obj]) if self._wants_table(request) else obj)
        if method == "POST" and path.subresource == "eviction" and kind.plural == "pods" and kind.group == "":
            assert namespace is not None and path.name is not None
            return self._reply(store.evict(namespace, path.name, request.data, dry_run), 201)
        if method == "POST" and path.name is None:
            return self._reply(store.create(kind, namespace, request.data, dry_run), 201)
        if method == "PUT" and path.name is not None:
            return self._reply(store.replace(kind, namespace, path.name, request.data, path.subresource, dry_run))
        if method == "PATCH" and path.name is not None:
            content_type = _header(request, "Content-Type")
            patched = store.patch(kind, namespace, path.name, request.data, content_type, path.subresource, dry_run)
            return self._reply(patched)
        if method == "DELETE" and path.name is not None and path.subresource is None:
            options = request.data if isinstance(request.data, dict) else {}
            if dry_run:
                options = {**options, "dryRun": ["All"]}
            return self._reply(store.delete(kind, namespace, path.name, options))
        raise api_error(405, "MethodNotAllowed", f"{method} {request.url.path} is not supported", kind)

    def _openapi(self, url_path: str) -> dict[str, Any]:
        parts = [p for p in url_path[len(_OPENAPI_V3) :].split("/") if p]
        kinds = list(self.store.kinds.values())
        if not parts:
            return openapi_v3_root(kinds)
        document = None
        if parts[0] == "api" and len(parts) == 2:
            document = openapi_v3_group(kinds, "", parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            document = openapi_v3_group(kinds, parts[1], parts[2])
        if document is None:
            raise api_error(404, "NotFound", f"no OpenAPI document at {url_path}")
        return document

    @staticmethod
    def _wants_table(request: kmock.Request) -> bool:
        return "as=Table" in _header(request, "Accept")

    def _listing(self, request: kmock.Request, kind: Kind, items: list[dict[str, Any]]) -> dict[str, Any]:
        revision = str(self.store.revision)
        if self._wants_table(request):
            return as_table(kind, items, revision)
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    # ---------------------------------------------------------------------------------------------- watch

    async def _watch(
        self, request: kmock.Request, kind: Kind, namespace: str | None, name: str | None
    ) -> AsyncIterator[Any]:
        yield b""  # send the headers now: clients wait for them before reading events
        store = self.store
        params = request.params
        match = store.matcher(params.get("labelSelector", ""), params.get("fieldSelector", ""))

        def visible(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            meta = obj.get("metadata") or {}
            if namespace is not None and meta.get("namespace") != namespace:
                return False
            return (name is None or meta.get("name") == name) and match(obj)

        def present(event: dict[str, Any]) -> dict[str, Any]:
            """``kubectl get -w`` asks for Tables: each event then carries a one-row Table."""
            if not tabular:
                return event
            return {**event, "object": as_table(kind, [event["object"]], str(store.revision))}

        tabular = self._wants_table(request)
        loop = asyncio.get_running_loop()
        timeout = params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        wake = asyncio.Event()
        store.listeners.append(wake.set)
        try:
            since_text = params.get("resourceVersion", "")
            initial_events = params.get("sendInitialEvents")
            if _flag(initial_events) or (initial_events is None and since_text in ("", "0")):
                # The current state as ADDED events, then the changes that follow: "Any"/"most recent" of a
                # classic watch, or the start of a watch-list stream (kubectl wait, informers of client-go).
                since = store.revision
                for obj in store.list_objects(kind, namespace):
                    if visible(obj):
                        yield present({"type": "ADDED", "object": obj})
                if _flag(initial_events):
                    # A watch-list client waits for this bookmark before it trusts its cache.
                    yield _initial_events_end(kind, since)
            elif initial_events is not None and since_text in ("", "0"):
                since = store.revision  # sendInitialEvents=false without a version: changes from now on
            else:
                since = int(since_text) if since_text.isdigit() else -1
                oldest = store.changes[0].revision if store.changes else store.revision + 1
                if since < 0 or (len(store.changes) == store.changes.maxlen and since < oldest - 1):
                    yield _expired(since_text)
                    return
            while not self.stopping:
                wake.clear()
                for change in _changes_after(store.changes, since):
                    since = change.revision
                    event = _event_for(change, kind, visible)
                    if event is not None:
                        yield present(event)
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    wait = _WATCH_POLL_SECONDS if remaining is None else min(_WATCH_POLL_SECONDS, remaining)
                    await asyncio.wait_for(wake.wait(), wait)
                transport = request._raw_request.transport if request._raw_request is not None else None
                if transport is None or transport.is_closing():
                    return  # the client went away; aiohttp does not cancel the handler for us
        finally:
            store.listeners.remove(wake.set)


def _changes_after(changes: Sequence[Change], revision: int) -> list[Change]:
    newer = []
    for change in reversed(changes):
        if change.revision <= revision:
            break
        newer.append(change)
    return newer[::-1]


def _event_for(change: Change, kind: Kind, visible: Any) -> dict[str, Any] | None:
    """Translate a store change into what this watch sees: objects entering or leaving its selector appear
    as ADDED or DELETED, as on a real API server."""
    if (change.kind.group, change.kind.plural) != (kind.group, kind.plural):
        return None
    was = change.type != "ADDED" and visible(change.old)
    now = change.type != "DELETED" and visible(change.new)
    if change.type == "DELETED":
        return {"type": "DELETED", "object": change.new} if visible(change.new) else None
    if was and now:
        return {"type": "MODIFIED", "object": change.new}
    if now:
        return {"type": "ADDED", "object": change.new}
    if was:
        return {"type": "DELETED", "object": change.new}
    return None


def _check_watch_list(params: Mapping[str, str], kind: Kind) -> None:
    """The API server's rules for a watch-list request (``sendInitialEvents``), checked before streaming."""
    if "sendInitialEvents" not in params:
        if params.get("resourceVersionMatch"):
            raise api_error(
                422, "Invalid", "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided", kind
            )
        return
    if params.get("resourceVersionMatch") != "NotOlderThan":
        raise api_error(422, "Invalid", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan", kind)
    if not _flag(params.get("allowWatchBookmarks")):
        raise api_error(422, "Invalid", "sendInitialEvents requires setting allowWatchBookmarks to true", kind)


def _initial_events_end(kind: Kind, revision: int) -> dict[str, Any]:
    """The BOOKMARK that ends the initial events of a watch-list stream."""
    metadata = {"resourceVersion": str(revision), "annotations": {INITIAL_EVENTS_END: "true"}}
    return {"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": metadata}}


def _expired(since: str) -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {since}",
            "reason": "Expired",
            "code": 410,
        },
    }


class KubeEmulator:
    """The emulated API server on 127.0.0.1, with the helpers tests and the dev stack use."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, crds: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.host = host
        self.port = port
        self.handler = ApiServer(default_crds() if crds is None else crds)
        self._runner: aiohttp.web.ServerRunner | None = None

    @property
    def store(self) -> Store:
        return self.handler.store

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> KubeEmulator:
        await self.handler.__aenter__()  # kmock's stream feeder and error bookkeeping
        server = aiohttp.web.Server(self.handler)
        self._runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is None:
            return
        self.handler.stopping = True
        for listener in list(self.store.listeners):
            listener()  # wake the watches so they end now
        await self._runner.cleanup()
        self._runner = None
        await self.handler.__aexit__(None, None, None)

    async def __aenter__(self) -> KubeEmulator:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        name = "kubeos-emulator"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            # The emulator checks no credentials; a token keeps clients that insist on a user happy.
            "users": [{"name": name, "user": {"token": "emulator"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
            "current-context": name,
        }

    def write_kubeconfig(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: processes waiting for the file never read half of it.
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False), encoding="utf-8")
        partial.replace(path)
        return path

    @property
    def cordon_log(self) -> list[CordonTransition]:
        """Every cordon/uncordon of a node, in order, with ``time.monotonic()`` stamps."""
        return list(self.store.cordons)

    def max_cordoned(self) -> int:
        """The most nodes that were cordoned at the same time, replaying the cordon log."""
        cordoned: set[str] = set()
        most = 0
        for t in self.store.cordons:
            (cordoned.add if t.unschedulable else cordoned.discard)(t.node)
            most = max(most, len(cordoned))
        return most

    def cordoned_now(self) -> set[str]:
        nodes = self.store.kind("", "v1", "nodes")
        listing = self.store.list_objects(nodes, None)
        return {n["metadata"]["name"] for n in listing if (n.get("spec") or {}).get("unschedulable")}


# ------------------------------------------------------------------------------------------------- process


async def serve(host: str, port: int, kubeconfig: Path | None, crd_files: Sequence[Path]) -> None:
    crds = [doc for path in crd_files for doc in load_crd_documents(path)] if crd_files else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with KubeEmulator(host=host, port=port, crds=crds) as kube:
        if kubeconfig is not None:
            kube.write_kubeconfig(kubeconfig)
        print(f"kube-emulator listening on {kube.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.kube_emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the kubeconfig)")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for this server here")
    parser.add_argument(
        "--crd", type=Path, action="append", default=[], help="CRD YAML to serve (default: the project's OS CRD)"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.kubeconfig, args.crd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
