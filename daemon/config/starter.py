"""The starter configuration ``cued init`` writes: each kind of event source that needs
nothing outside this machine, one pipeline, and a comment on every line worth one. It runs
as written (``cued run``); tests hold it to that."""

from __future__ import annotations

__all__ = ["STARTER_CONFIG", "STARTER_DROP_FOLDER"]

#: The folder the starter's files source watches, relative to the config file.
STARTER_DROP_FOLDER = "drop"

STARTER_CONFIG = f"""\
# A starter configuration for cued, written by `cued init`. It runs as it is:
#
#   cued run                       # the daemon, in the foreground
#   cued trigger hello --wait      # from another shell: a run of `hello` now
#   cued runs                      # what ran
#
# Edit it freely; `cued validate` checks it (file:line for every problem).

[daemon]
state = "cued.db"             # SQLite file with every event, run and task (relative to here)
log_level = "info"

[http]
listen = "127.0.0.1:8080"     # webhooks and the API (/api/v1); the UI is at /ui

# -- the pipeline: a graph of tasks ------------------------------------------------------

[pipelines.hello]
inputs = {{ name = "world" }}  # inputs and their defaults: `cued trigger hello -i name=you`

[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello {{{{ inputs.name }}}}"]   # templates see inputs, run and tasks
timeout = "30s"

[pipelines.hello.tasks.shout]
kind = "shell"
needs = ["greet"]             # runs after greet, and reads its output
argv = ["echo", "{{{{ tasks.greet.output.stdout | trim | upper }}}}"]
retries = 2                   # tried again (with backoff) if it fails
retry_backoff = "1s"

# -- where events come from ----------------------------------------------------------------

[sources.hook]
kind = "webhook"              # curl -X POST localhost:8080/hooks/hello \\
path = "/hooks/hello"         #   -H 'content-type: application/json' -d '{{"name": "you"}}'

[sources.drop]
kind = "files"
path = "{STARTER_DROP_FOLDER}"                 # a file put here (once complete) is an event, then moved to drop/processed/
pattern = "*"

[sources.hourly]
kind = "schedule"
cron = "0 * * * *"            # at the start of every hour
timezone = "UTC"
catchup = "latest"            # after downtime, fire only the latest missed tick

# -- triggers: which events start which pipeline, with what inputs -------------------------
# `cued triggers test 1` tries the first of them on the events stored so far.

[[triggers]]
source = "hook"
pipeline = "hello"
inputs = {{ name = "{{{{ event.data.name | default('webhook') }}}}" }}

[[triggers]]
source = "drop"
pipeline = "hello"
inputs = {{ name = "file {{{{ event.data.name }}}}" }}

[[triggers]]
source = "hourly"
pipeline = "hello"
inputs = {{ name = "the clock at {{{{ event.data.tick }}}}" }}
"""
