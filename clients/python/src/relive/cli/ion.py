"""``relive ion register FILE.yaml | list | show ION [--revision N]``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from relive.cli.output import add_json_flag, emit_json, table, to_dict
from relive.client.channel import connect_channel, load_endpoints
from relive.client.registry import RegistryClient
from relive.registry.v1 import registry_pb2 as pb


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ion", help="register, list and show IONs")
    commands = parser.add_subparsers(dest="ion_command", metavar="COMMAND", required=True)

    p = commands.add_parser("register", help="create the ION of FILE, or a new revision of it")
    p.add_argument("file", metavar="FILE.yaml")
    add_json_flag(p)
    p.set_defaults(func=_register)

    p = commands.add_parser("list", help="list the IONs")
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = commands.add_parser("show", help="show an ION and one of its revisions")
    p.add_argument("ion", metavar="ION")
    p.add_argument("--revision", type=int, help="revision number (default: the latest)")
    add_json_flag(p)
    p.set_defaults(func=_show)


@contextmanager
def _client() -> Iterator[RegistryClient]:
    endpoints = load_endpoints()
    channel = connect_channel(endpoints.registry)
    try:
        yield RegistryClient(channel)
    finally:
        channel.close()


def _time(message: Any) -> str:
    return str(message.ToDatetime().isoformat(timespec="seconds")) + "Z"


def _register(args: argparse.Namespace) -> int:
    with _client() as client:
        done = client.register(args.file)
    if args.json:
        emit_json(
            {
                "ion": to_dict(done.ion),
                "revision": to_dict(done.revision),
                "created": done.created,
                "new_revision": done.new_revision,
            }
        )
        return 0
    rev = done.revision
    if done.created:
        print(f"created {done.ion.name} at revision {rev.revision_id}")
    elif done.new_revision:
        print(f"{done.ion.name}: new revision {rev.revision_id}")
    else:
        print(f"{done.ion.name}: unchanged, still revision {rev.revision_id}")
    for ref in rev.code_refs:
        dirty = " (dirty)" if ref.dirty else ""
        print(f"  code {ref.module}: {ref.repo} {ref.path} @ {ref.commit[:12]}{dirty}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client() as client:
        ions = list(client.list_ions())
    if args.json:
        emit_json({"ions": [to_dict(i) for i in ions]})
        return 0
    table(
        [
            (
                i.name.removeprefix("ions/"),
                i.latest_revision,
                i.retention_days,
                _time(i.update_time),
            )
            for i in ions
        ],
        ["ION", "REVISION", "RETENTION_DAYS", "UPDATED"],
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client() as client:
        ion = client.get_ion(args.ion)
        rev = client.get_revision(args.ion, "latest" if args.revision is None else args.revision)
    if args.json:
        emit_json({"ion": to_dict(ion), "revision": to_dict(rev)})
        return 0
    print(f"{ion.name}  revision {rev.revision_id} of {ion.latest_revision}")
    print(f"  retention: {rev.definition.retention_days} days")
    print(f"  created:   {_time(rev.create_time)}")
    print(f"  sha256:    {rev.definition_sha256}")
    if rev.source_path:
        print(f"  source:    {rev.source_path}")
    print("nodes:")
    for node_id in sorted(rev.definition.nodes):
        print(f"  {node_id}: {_describe(rev.definition.nodes[node_id])}")
    if rev.definition.edges:
        print("edges:")
        for e in rev.definition.edges:
            print(f"  {e.from_node} -> {e.to_node} ({e.carries})")
    if rev.code_refs:
        print("code:")
        for ref in rev.code_refs:
            dirty = " (dirty)" if ref.dirty else ""
            print(f"  {ref.module}: {ref.repo} {ref.path} @ {ref.commit[:12]}{dirty}")
    return 0


def _describe(node: pb.Node) -> str:
    if node.HasField("policy"):
        from relive import policies  # the kinds' table; numpy with it, so only when needed

        kind = policies.by_enum(node.policy.type)
        return f"policy {kind.name if kind else node.policy.type}"
    parts = [f"pipeline of {len(node.pipeline.components)} components"]
    components = node.pipeline.components
    calls = (components[c].call or " ".join(components[c].command) for c in components)
    parts.append(", ".join(calls))
    if node.HasField("schedule"):
        parts.append(f"schedule {to_dict(node.schedule)}")
    if node.HasField("streaming"):
        parts.append(f"streaming {to_dict(node.streaming)}")
    return "; ".join(parts)
