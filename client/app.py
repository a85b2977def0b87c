"""The hospital ClientApp: describe the site, run a phase; reply with weights and aggregates only.

``describe`` is answered from the site's folders alone. Every phase of
``core.phases.PHASES`` is registered from that registry on the first message that is not a
``describe``: its message type (``train.<phase>`` or ``evaluate``) is dispatched to the
phase's site procedure after the round config and the phase's settings have been parsed
into bounded records. Registering late keeps torch and MONAI out of a process that only
describes: in deployment Flower starts a ClientApp process per message, and every node
that connects is asked to describe itself (about 1 CPU-second of imports instead of 10).

A handler that fails is logged whole at the site; the server is told the error's type and
text with every path taken out (:func:`redact`): a data error names the site's files,
which are not the server's to see.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.site import Site
from core.describe import DESCRIBE

if TYPE_CHECKING:
    from core.phases import PhaseSpec

Handler = Callable[[Message, Context], Message]

DEFAULT_MAX_ACTIVATION_GB = 16.0
PATH = re.compile(r"""(?<![\w.])(?:[A-Za-z]:)?(?:[/\\][^\s'"/\\:,;()]+)+[/\\]?""")
"""An absolute file system path (POSIX or Windows) inside an error's text."""

log = logging.getLogger(__name__)


class SiteFailure(RuntimeError):
    """What the server is told of an error at the site: its type and redacted text."""


def redact(text: str) -> str:
    """``text`` with every absolute path replaced by ``<path>``."""
    return PATH.sub("<path>", text)


def reporting(handle: Handler) -> Handler:
    """``handle``, whose errors reach the server redacted and the site's log whole."""

    @functools.wraps(handle)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handle(msg, context)
        except Exception as e:
            log.exception("%s failed at this site", msg.metadata.message_type)
            raise SiteFailure(f"{type(e).__name__}: {redact(str(e))}") from None

    return guarded


class SiteApp(ClientApp):
    """Flower's ClientApp, with the phase handlers registered when a phase is first asked for."""

    def __init__(self) -> None:
        super().__init__()
        self._phases_registered = False

    def __call__(self, message: Message, context: Context) -> Message:
        """Dispatch ``message`` (registering the phases first unless it is a describe)."""
        if message.metadata.message_type != DESCRIBE and not self._phases_registered:
            from core.phases import PHASES

            for phase in PHASES.values():
                register(self, phase.message_type, handler(phase))
            self._phases_registered = True
        return super().__call__(message, context)


def register(client_app: ClientApp, message_type: str, handle: Handler) -> None:
    """Register ``handle`` for a Flower message type ``<category>[.<action>]``."""
    category, _, action = message_type.partition(".")
    getattr(client_app, category)(action or "default")(reporting(handle))


def max_activation_bytes(context: Context) -> int:
    """The largest training round this node runs (node config ``max-activation-gb``)."""
    limit = float(context.node_config.get("max-activation-gb", DEFAULT_MAX_ACTIVATION_GB))
    return int(limit * 2**30)


def describe(msg: Message, context: Context) -> Message:
    """Tell the server the site's name, datasets (structures, case counts) and cached encoders."""
    return Message(Site.from_context(context).describe(), reply_to=msg)


def handler(phase: PhaseSpec[Any, Any]) -> Handler:
    """The ClientApp handler of one phase."""

    def handle(msg: Message, context: Context) -> Message:
        from core.protocol import CONFIG, SETTINGS, RoundConfig

        Site.threads(context)
        content = msg.content
        cfg = RoundConfig.from_record(content.config_records[CONFIG])
        cfg.check_affordable(max_activation_bytes(context))
        if cfg.phase != phase.name:
            raise ValueError(f"a {phase.message_type} message configured for phase {cfg.phase!r}")
        settings = phase.parse_settings(content.config_records.get(SETTINGS))
        return Message(
            phase.at_site(Site.from_context(context), cfg, settings, content), reply_to=msg
        )

    handle.__doc__ = f"Run the {phase.name} phase on this site's data."
    return handle


app = SiteApp()
register(app, DESCRIBE, describe)
