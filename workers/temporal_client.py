"""One way for every process to reach Temporal.

Settings come from the same environment variables and TOML profiles the ``temporal`` CLI reads
(``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_*``, ``TEMPORAL_PROFILE``),
so an operator configures TLS, mTLS or an API key once for the CLI and for our workers alike.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile

DEFAULT_ADDRESS = "127.0.0.1:7233"


def data_converter() -> DataConverter:
    """The converter shared by clients, workers and replayers (pydantic models on the wire).

    When ``KUBEOS_ROLLOUT_CODEC_KEY`` is set, payloads are also encrypted (see ``workers.codec``).
    """
    from workers.codec import codec_from_env

    codec = codec_from_env()
    if codec is None:
        return pydantic_data_converter
    import dataclasses

    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


async def connect(address: str | None = None, namespace: str | None = None) -> Client:
    """Connect with the CLI's configuration, letting explicit arguments win."""
    profile = ClientConfigProfile.load()
    config = profile.to_client_connect_config()
    if address:
        config["target_host"] = address
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if namespace:
        config["namespace"] = namespace
    return await Client.connect(**config, data_converter=data_converter())
