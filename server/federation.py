"""Talking to the sites through Flower's Grid: who is there, one round of messages, replies."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from core import anatomy
from core.describe import DESCRIBE, SITE, DatasetRecord, SiteRecord, serves
from core.records import RecordError, parse
from server.wire import RECEIVED, SENT, WireLog

log = logging.getLogger(__name__)

DESCRIBE_TIMEOUT = 120.0  # seconds for every node to say what it holds


@dataclass
class SiteInfo:
    """What a site said about itself (no case identifiers, no images)."""

    node_id: int
    name: str
    datasets: list[tuple[tuple[str, ...], int]]
    encoders: set[str] = field(default_factory=set)

    def cases_for(self, structures: tuple[str, ...], partial: bool = False) -> int:
        """Cases of the dataset a site trains ``structures`` on (0 if none).

        The first dataset that labels all of them; with ``partial``, the first that labels
        any (:func:`core.describe.serves`).
        """
        for labelled, cases in self.datasets:
            if serves(labelled, structures, partial):
                return cases
        return 0


def parse_description(node: int, content: RecordDict) -> SiteInfo:
    """A site's ``describe`` reply, parsed into bounded records.

    Raises:
        RecordError: for a missing or malformed field.
    """
    about = content.config_records.get(SITE)
    if about is None:
        raise RecordError(f"no {SITE!r} record")
    site = parse(SiteRecord, dict(about), SITE, wire=True)
    datasets = []
    for i in range(site.datasets):
        record = content.config_records.get(DatasetRecord.key(i))
        if record is None:
            raise RecordError(f"no {DatasetRecord.key(i)!r} record")
        ds = parse(DatasetRecord, dict(record), DatasetRecord.key(i), wire=True)
        datasets.append((ds.structures, ds.cases))
    return SiteInfo(node, site.name, datasets, set(site.encoders))


def distinct_sites(sites: list[SiteInfo]) -> list[SiteInfo]:
    """The sites by name, without any name that several nodes claim (all are refused)."""
    names = [s.name for s in sites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        log.error("several nodes claim the site name(s) %s: all of them refused", duplicates)
    return sorted((s for s in sites if s.name not in duplicates), key=lambda s: s.name)


MAX_REASON_CHARS = 500  # a site's error text is kept in logs and the journal, bounded


@dataclass(frozen=True)
class Reply:
    """A site's answer to one message: its content, or why there is none."""

    site: SiteInfo
    content: RecordDict | None
    error: str | None = None


class Federation:
    """The sites reachable through a Grid."""

    def __init__(
        self, grid: Grid, timeout: float | None = None, wire: WireLog | None = None
    ) -> None:
        """Talk through ``grid``; ``timeout`` (seconds) overrides every round's own.

        With ``wire``, every message sent and received is logged there.
        """
        self.grid = grid
        self.timeout = timeout
        self.wire = wire or WireLog(None)

    def online_node_ids(self) -> set[int]:
        """The nodes the SuperLink sees online now."""
        return {info.node_id for info in self.grid.get_nodes()}

    def describe_sites(self) -> list[SiteInfo]:
        """Ask every node to describe its site.

        A node that fails or sends a malformed description is logged and left out. With
        SuperNode authentication a node's identity is its registered key: the name it was
        registered under (``flwr supernode register KEY.pub --name SITE``) must be the
        site name it declares, or it is refused. A site name claimed by several nodes is
        refused for all of them (none can be told from an impostor).
        """
        registered = {info.node_id: info.name for info in self.grid.get_nodes()}
        nodes = list(registered)
        if not nodes:  # Flower refuses to send an empty batch of messages
            log.error("no node is connected")
            return []
        messages = [Message(RecordDict(), dst_node_id=n, message_type=DESCRIBE) for n in nodes]
        for n in nodes:
            self.wire.write(SENT, DESCRIBE, f"node {n}", RecordDict())
        sites = []
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout or DESCRIBE_TIMEOUT):
            node = reply.metadata.src_node_id
            error = str(reply.error.reason) if reply.has_error() else None
            self.wire.write(
                RECEIVED, DESCRIBE, f"node {node}", None if error else reply.content, error
            )
            if reply.has_error():
                log.warning("node %s could not describe itself: %s", node, reply.error.reason)
                continue
            try:
                site = parse_description(node, reply.content)
            except (RecordError, anatomy.UnknownStructureError) as e:
                log.warning("node %s: refused its description: %s", node, e)
                continue
            if registered.get(node) and registered[node] != site.name:
                log.error(
                    "node %s is registered as %r but calls itself %r: refused",
                    node,
                    registered[node],
                    site.name,
                )
                continue
            sites.append(site)
        return distinct_sites(sites)

    def exchange(
        self,
        message_type: str,
        contents: Mapping[int, RecordDict],
        sites: list[SiteInfo],
        group: str,
        timeout: float,
    ) -> list[Reply]:
        """Send one message per site and collect the replies.

        A site that does not answer (dropped out, timed out, failed) gets a Reply with an
        error, never an exception. ``timeout`` is the round's own limit in seconds
        (the federation's override wins).
        """
        by_node = {s.node_id: s for s in sites}
        messages = [
            Message(
                contents[s.node_id],
                dst_node_id=s.node_id,
                message_type=message_type,
                group_id=group,
            )
            for s in sites
        ]
        for s in sites:
            self.wire.write(SENT, message_type, s.name, contents[s.node_id])
        replies: dict[int, Reply] = {}
        limit = self.timeout or timeout
        start = time.monotonic()
        for msg in self.grid.send_and_receive(messages, timeout=limit):
            site = by_node.get(msg.metadata.src_node_id)
            if site is None:
                continue
            if msg.has_error():
                reason = str(msg.error.reason or f"error {msg.error.code}")
                replies[site.node_id] = Reply(site, None, reason[:MAX_REASON_CHARS])
                self.wire.write(RECEIVED, message_type, site.name, None, reason[:MAX_REASON_CHARS])
            else:
                replies[site.node_id] = Reply(site, msg.content)
                self.wire.write(RECEIVED, message_type, site.name, msg.content)
        waited = time.monotonic() - start
        silent = (
            f"no reply before the timeout ({limit:.0f} s)"
            if waited >= limit - 1.0
            else f"no reply: the node went offline after {waited:.0f} s (link lost or stopped)"
        )
        return [replies.get(s.node_id, Reply(s, None, silent)) for s in sites]
