"""Pipelines written in Python with decorators run like the ones in TOML."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.assembly import open_runner
from cued.daemon.errors import ConfigError

MODULE = """
from cued.daemon.dsl import pipeline

etl = pipeline("etl", inputs={"day": "monday"}, max_active_runs=2)

@etl.task(retries=1)
async def extract(day):
    return [f"{day}-a", f"{day}-b"]

@etl.task(map=extract)
def clean(item):
    return item.upper()

@etl.task(needs=[extract, clean])
async def load(extract, clean, ctx):
    return {"raw": extract, "clean": clean, "run": ctx.run_id}
"""


async def test_decorated_functions_become_a_pipeline_that_runs(make_config, tmp_path):
    (tmp_path / "my_pipelines.py").write_text(MODULE)
    config = make_config('[daemon]\npython_modules = ["my_pipelines.py"]\n')
    etl = config.pipelines["etl"]
    assert etl.max_active_runs == 2
    assert etl.tasks["extract"].retries == 1
    assert etl.tasks["clean"].map == "{{ tasks.extract.output }}"
    assert etl.tasks["load"].needs == ("extract", "clean")

    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = (await runner.start_run("etl", {"day": "friday"})).run_id
            row = await runner.wait(run_id)
        attempts = {a.key: a.output for a in await runner.store.get_attempts(run_id)}
    assert row.state == "succeeded", row.error
    assert attempts["load"] == {
        "raw": ["friday-a", "friday-b"],
        "clean": ["FRIDAY-A", "FRIDAY-B"],
        "run": run_id,
    }


def test_a_module_that_does_not_import_is_a_config_error(make_config, tmp_path):
    (tmp_path / "bad_pipelines.py").write_text("import nonexistent_thing\n")
    with pytest.raises(ConfigError) as caught:
        make_config('[daemon]\npython_modules = ["bad_pipelines.py"]\n')
    (problem,) = caught.value.problems
    assert problem.path == "daemon.python_modules"
    assert problem.line == 2
    assert "cannot import python module 'bad_pipelines.py': ModuleNotFoundError" in problem.message
