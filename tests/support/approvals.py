"""A config with an approval gate between a draft and its publishing, for the tests of gates."""

from __future__ import annotations

__all__ = ["GATED", "gated"]


GATED = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[auth.users.alice]
token = "alice-token"
roles = ["approver", "viewer"]
[auth.users.olga]
token = "olga-token"
roles = ["approver"]
groups = ["ops"]
[auth.users.victor]
token = "victor-token"
roles = ["viewer"]

[pipelines.post]
inputs = {{ topic = "cats" }}
[pipelines.post.tasks.draft]
kind = "shell"
argv = ["echo", "A post about {{{{ inputs.topic }}}}"]
[pipelines.post.tasks.gate]
kind = "approval"
needs = ["draft"]
message = "Publish '{{{{ tasks.draft.output.stdout | trim }}}}'?"
approvers = [{approvers}]
payload = {{ title = "{{{{ tasks.draft.output.stdout | trim }}}}" }}
{gate_extra}
[pipelines.post.tasks.publish]
kind = "shell"
needs = ["gate"]
argv = ["echo", "published {{{{ tasks.gate.output.payload.title }}}} ({{{{ tasks.gate.output.decision }}}})"]
[pipelines.post.tasks.report]
kind = "shell"
needs = ["gate"]
trigger_rule = "all_done"
argv = ["echo", "{{{{ tasks.gate.output.decision }}}}"]
"""


def gated(gate_extra: str = "", approvers: str = '"alice", "group:ops"') -> str:
    return GATED.format(gate_extra=gate_extra, approvers=approvers)
