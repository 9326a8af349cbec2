"""The pipeline the flow-control crash tests hold events for: orders from a webhook,
keyed by customer, each run noting the ids of its events in a ledger file (a shell task,
so one that a kill -9 caught running runs again after the restart)."""

from __future__ import annotations

__all__ = ["NOTED_ORDERS"]

#: TOML, a ``str.format`` template (``{ledger}``, the file): the source, the pipeline and
#: the head of the trigger; a test adds the trigger's inputs and its flow control
NOTED_ORDERS = """
[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[pipelines.sync]
inputs = {{ ids = "" }}
[pipelines.sync.tasks.note]
kind = "shell"
command = "echo {{{{ inputs.ids | shell_quote }}}} >> {ledger}"

[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{{{ event.data.customer }}}}"
"""
