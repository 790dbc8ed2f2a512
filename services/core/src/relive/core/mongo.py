"""Connects a service's mongoengine documents to its own database."""

from __future__ import annotations

import mongoengine
from pymongo import MongoClient

from relive.core.config import Config
from relive.errors import FailedPrecondition


def connect(config: Config, service: str) -> MongoClient:
    """(Re)binds the mongoengine alias ``service`` to ``<prefix>_<service>``.

    mongoengine keeps connections by alias, process-wide; binding again replaces the old one,
    which lets tests give every server a fresh database. It also hands aliases with equal
    settings one shared client, so each service names itself (``appname``): otherwise one
    service's shutdown would close another's connection in the same process.
    """
    if not config.mongodb_uri:
        raise FailedPrecondition(
            "RELIVE_MONGODB_URI is not set: start the stack with `relive up`, "
            "or point the service at a MongoDB",
            field="RELIVE_MONGODB_URI",
        )
    mongoengine.disconnect(alias=service)
    client: MongoClient = mongoengine.connect(
        db=config.database(service),
        alias=service,
        host=config.mongodb_uri,
        uuidRepresentation="standard",
        tz_aware=True,
        serverSelectionTimeoutMS=10_000,
        appname=f"relive-{service}",
    )
    return client


def disconnect(service: str) -> None:
    """Closes the service's client and forgets its alias."""
    mongoengine.disconnect(alias=service)
