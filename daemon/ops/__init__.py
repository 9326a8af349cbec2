"""The application surface: what the API, the UI and the CLI call, and all they call.

```
queries.py    reads: a run's detail, pages of runs and events, counts, gates, assets
cursors.py    pages and their one cursor format
lineage.py    an event's lineage both ways, and the assets of a run (domain data)
commands.py   acts: trigger, cancel, rerun, decide, wait, prune
repair.py     rerun and cancel of recorded runs
replay.py     stored events matched again against today's triggers (which events)
backfill.py   a source's events of a past span recorded again (which span)
host.py       what ops needs of the daemon (a port the runtime's runner satisfies)
local.py      the state file for a face with no daemon (the CLI)
```
"""
