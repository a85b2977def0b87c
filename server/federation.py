"""Talking to the sites through Flower's Grid: who is there, one round of messages, replies."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from core.protocol import DESCRIBE, SITE

log = logging.getLogger(__name__)


@dataclass
class SiteInfo:
    """What a site said about itself (no case identifiers, no images)."""

    node_id: int
    name: str
    datasets: list[tuple[str, tuple[str, ...], int]]
    encoders: set[str] = field(default_factory=set)

    def cases_for(self, structures: tuple[str, ...]) -> int:
        """Cases of the first dataset that labels all ``structures`` (0 if none)."""
        for _, labelled, cases in self.datasets:
            if set(structures) <= set(labelled):
                return cases
        return 0


@dataclass(frozen=True)
class Reply:
    """A site's answer to one message: its content, or why there is none."""

    site: SiteInfo
    content: RecordDict | None
    error: str | None = None


class Federation:
    """The sites reachable through a Grid."""

    def __init__(self, grid: Grid, timeout: float | None = None) -> None:
        self.grid = grid
        self.timeout = timeout

    def describe_sites(self) -> list[SiteInfo]:
        """Ask every node to describe its site; nodes that fail are logged and left out."""
        nodes = list(self.grid.get_node_ids())
        messages = [Message(RecordDict(), dst_node_id=n, message_type=DESCRIBE) for n in nodes]
        sites = []
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %s could not describe itself: %s", node, reply.error.reason)
                continue
            content = reply.content
            about = content.config_records[SITE]
            datasets = [
                (str(r["name"]), tuple(str(s) for s in list(r["structures"])), int(str(r["cases"])))  # type: ignore[arg-type]
                for key, r in content.config_records.items()
                if key.startswith("dataset-")
            ]
            encoders = {str(s) for s in about.get("encoders", [])}  # type: ignore[union-attr]
            sites.append(SiteInfo(node, str(about["name"]), datasets, encoders))
        names = [s.name for s in sites]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            log.warning("several nodes claim the same site name: %s", sorted(duplicates))
        return sorted(sites, key=lambda s: s.name)

    def exchange(
        self,
        message_type: str,
        contents: Mapping[int, RecordDict],
        sites: list[SiteInfo],
        group: str,
    ) -> list[Reply]:
        """Send one message per site and collect the replies.

        A site that does not answer (dropped out, timed out, failed) gets a Reply with an
        error, never an exception.
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
        replies: dict[int, Reply] = {}
        for msg in self.grid.send_and_receive(messages, timeout=self.timeout):
            site = by_node.get(msg.metadata.src_node_id)
            if site is None:
                continue
            if msg.has_error():
                replies[site.node_id] = Reply(
                    site, None, msg.error.reason or f"error {msg.error.code}"
                )
            else:
                replies[site.node_id] = Reply(site, msg.content)
        return [
            replies.get(s.node_id, Reply(s, None, "no reply before the timeout")) for s in sites
        ]
