"""MQTT topic names of protocol v1 (edge.md); the prefix is configurable (default "mes")."""

from __future__ import annotations

DEFAULT_PREFIX = "mes"


def events(edge_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/v1/edge/{edge_id}/events"


def acks(edge_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/v1/edge/{edge_id}/acks"


def status(edge_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/v1/edge/{edge_id}/status"


def events_subscription(prefix: str = DEFAULT_PREFIX, shared_group: str | None = None) -> str:
    """Every edge's events; an MQTT v5 shared subscription when a group is configured."""
    topic = f"{prefix}/v1/edge/+/events"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def status_subscription(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/v1/edge/+/status"


def edge_id_of(topic: str, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The edgeId segment of `{prefix}/v1/edge/{edgeId}/{leaf}`, or None when the topic is not ours."""
    parts = topic.split("/")
    head = prefix.split("/")
    n = len(head)
    if len(parts) != n + 4 or parts[:n] != head or parts[n : n + 2] != ["v1", "edge"] or not parts[n + 2]:
        return None
    return parts[n + 2]
