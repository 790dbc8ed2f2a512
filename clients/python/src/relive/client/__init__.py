"""Typed clients of the relive services."""

from relive.client.channel import Endpoints, connect_channel, load_endpoints

__all__ = ["Endpoints", "connect_channel", "load_endpoints"]
