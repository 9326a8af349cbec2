"""The pure core: what a run is and what happens next, from state and an event to decisions.

No I/O, no clock, no anyio here (import-linter checks it): the engine and the states it
moves through, the plan of a pipeline, its graph, templates, trigger matching, the parsing
of outside bytes and ids.
"""
