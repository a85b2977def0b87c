"""The hospital ClientApp: describe the site, run a phase; reply with weights and aggregates only.

Every phase of ``core.phases.PHASES`` is registered from the registry: its message type
(``train.<phase>`` or ``evaluate``) is dispatched to the phase's site procedure after the
round config and the phase's settings have been parsed into bounded records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.site import Site
from core.phases import PHASES, PhaseSpec
from core.protocol import CONFIG, SETTINGS, RoundConfig

app = ClientApp()

DEFAULT_MAX_ACTIVATION_GB = 16.0


def max_activation_bytes(context: Context) -> int:
    """The largest training round this node runs (node config ``max-activation-gb``)."""
    limit = float(context.node_config.get("max-activation-gb", DEFAULT_MAX_ACTIVATION_GB))
    return int(limit * 2**30)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server the site's name, datasets (structures, case counts) and cached encoders."""
    return Message(Site.from_context(context).describe(), reply_to=msg)


def handler(phase: PhaseSpec[Any, Any]) -> Callable[[Message, Context], Message]:
    """The ClientApp handler of one phase."""

    def handle(msg: Message, context: Context) -> Message:
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


for _phase in PHASES.values():
    _category, _, _action = _phase.message_type.partition(".")
    getattr(app, _category)(_action or "default")(handler(_phase))
