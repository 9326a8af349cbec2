"""Config files more than one test reads."""

from __future__ import annotations

__all__ = ["SHELL", "VALID"]

VALID = """\
# every feature, once
[daemon]
state = "state/cued.db"
max_running_tasks = 32
pools = { shell = 4, http = 16 }
backlog_high_water = 100
backlog_low_water = 10
shutdown_grace = "1m30s"
synchronous = "normal"
log_level = "warning"

[pipelines.orders]
max_active_runs = 4
inputs = { day = "2024-05-01", parts = ["a", "b"] }

[pipelines.orders.tasks.fetch]
kind = "http"
method = "post"
url = "http://localhost:9/orders?day={{ inputs.day }}"
headers = { Authorization = "Bearer x" }
json = { day = "{{ inputs.day }}" }
expected_status = [200, 201]
retries = 3
retry_backoff = "250ms"
retry_backoff_max = 60
timeout = "2h"
pool = "http"
produces = ["orders"]

[pipelines.orders.tasks.part]
kind = "shell"
needs = ["fetch"]
map = "{{ inputs.parts }}"
argv = ["echo", "{{ item }}", "{{ tasks.fetch.output.status }}", "{{ run.id }}"]
env = { DAY = "{{ inputs.day }}" }
pool = "shell"

[pipelines.orders.tasks.sum]
kind = "python"
needs = ["part"]
function = "tests.support.pyfuncs:add"
args = { a = 1, b = "{{ tasks.part.output | length }}" }

[pipelines.orders.tasks.cleanup]
kind = "sleep"
needs = ["sum"]
trigger_rule = "all_done"
seconds = 0.5

[pipelines.nightly.tasks.only]
kind = "shell"
command = "date"
"""

#: One pipeline of one shell task: ``SHELL.format(command=...)``, a TOML string.
SHELL = """\
[pipelines.p]
inputs = {{ x = "", n = 1 }}
[pipelines.p.tasks.t]
kind = "shell"
command = {command}
"""
