"""Where the Kubernetes API is: one place that turns "kubeconfig or in-cluster" into an ``ApiClient``.

Order of precedence (the same as kubectl's, plus in-cluster for the cluster worker's pod):

1. an explicit kubeconfig path, given to :func:`use_kubeconfig` (the worker's ``--kubeconfig``) or to
   :func:`new_api_client`;
2. the ``KUBECONFIG`` environment variable (several files joined with ``:`` are merged, as kubectl does);
3. the service account of the pod we run in (``KUBERNETES_SERVICE_HOST`` is set);
4. ``~/.kube/config``.

The activities share one client per process: the official client is synchronous and thread-safe (a urllib3
pool), and the activities run on the worker's thread pool.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from kubernetes import client, config

_lock = threading.Lock()
_configured_path: str | None = None
_shared: client.ApiClient | None = None


class KubeConfigError(RuntimeError):
    """No usable Kubernetes configuration was found."""


def new_api_client(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> client.ApiClient:
    """A fresh ``ApiClient`` following the order of precedence above."""
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG", "")
    if path:
        # new_client_from_config (not load_kube_config) keeps the global default configuration untouched,
        # so two clusters can be used side by side in one process (tests do).
        return config.new_client_from_config(config_file=path, context=context, persist_config=False)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration=configuration)
    default = Path.home() / ".kube" / "config"
    if default.is_file():
        return config.new_client_from_config(config_file=str(default), context=context, persist_config=False)
    raise KubeConfigError(
        "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, run in a pod, or create ~/.kube/config"
    )


def use_kubeconfig(kubeconfig: str | os.PathLike[str] | None) -> None:
    """Make the activities of this process talk to the cluster of ``kubeconfig`` (None: the defaults)."""
    global _configured_path, _shared
    with _lock:
        _configured_path = str(kubeconfig) if kubeconfig else None
        if _shared is not None:
            _shared.close()
        _shared = None


def api_client() -> client.ApiClient:
    """The process-wide client, created on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = new_api_client(_configured_path)
        return _shared
