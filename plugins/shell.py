"""The ``shell`` task kind: run a program and keep the tail of what it prints.

The program does not inherit the daemon's environment, which holds the secrets that
``env:`` names: it gets a small base, the names ``[daemon] task_env`` and the task's
``env`` let through, and the values ``env`` sets (see :mod:`cued.daemon.config.environment`).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cued.daemon.sdk import (
    EnvSpec,
    ParamProblem,
    PermanentTaskError,
    ProgramEnv,
    TaskError,
    has_template,
    program_env,
    run_program,
)
from cued.plugins._shell_templates import argv_problems, command_problems, cwd_problems

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from cued.daemon.sdk import TaskContext

__all__ = ["ShellParams", "ShellTask"]

#: How many of stderr's last lines a failure message quotes.
_ERROR_STDERR_LINES = 10

#: How much of a ``command`` a failure message quotes.
_ERROR_COMMAND_CHARS = 200


class ShellParams(BaseModel):
    """Parameters of a ``shell`` task; give exactly one of ``argv`` and ``command``.

    :param argv: the program and its arguments, run directly with no shell in between
    :param command: a command line, run by ``/bin/sh -c``; only this form expands
        variables, globs and pipes. A template in it should go through ``shell_quote``
        (``cued validate`` warns otherwise): event data would be run as shell code.
    :param env: what the program's environment holds besides the base and ``[daemon]
        task_env``: ``["NAME", "NAME=value"]`` (a name alone is passed through from the
        daemon's environment, if set there), or a table of values. Names are written
        out; values may be templates.
    :param cwd: the working directory, by default the daemon's; a template here is
        warned of (refused if the program is a relative path)
    :param output_tail_bytes: how many of the last bytes of stdout and of stderr to keep
        (each); the rest is read and dropped, so a chatty program cannot exhaust memory
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str] | None = Field(default=None, min_length=1)
    command: str | None = Field(default=None, min_length=1)
    env: EnvSpec = Field(default_factory=dict)
    cwd: str | None = None
    output_tail_bytes: int = Field(default=64 * 1024, ge=0)

    @model_validator(mode="after")
    def _argv_xor_command(self) -> ShellParams:
        if (self.argv is None) == (self.command is None):
            raise ValueError("give exactly one of 'argv' and 'command'")
        return self

    @classmethod
    def template_problems(cls, params: Mapping[str, Any]) -> Iterator[ParamProblem]:
        """Names in ``env`` that a template would choose (event data picking which of
        the daemon's variables, its secrets, to pass on), and a template choosing the
        program: refused. A template in ``command``, or in the script of ``argv = ["sh",
        "-c", ...]``, that ``shell_quote`` does not make one word (or that sits in an
        unquoted here-document), one in the code of ``python -c`` and the like, and one
        in ``cwd``: a warning (see :mod:`cued.plugins._shell_templates`)."""
        env = params.get("env")
        if isinstance(env, str) and has_template(env):
            yield ParamProblem(("env",), "must be written out, not a template")
        for index, item in enumerate(env if isinstance(env, list) else ()):
            if isinstance(item, str) and has_template(item.partition("=")[0]):
                yield ParamProblem(
                    ("env", index),
                    f"{item!r}: a variable's name must be written out, not a template "
                    "(a template may give the value, after NAME=)",
                )
        command = params.get("command")
        if isinstance(command, str):
            yield from command_problems(command)
        argv = params.get("argv")
        if isinstance(argv, list):
            yield from argv_problems(argv)
        yield from cwd_problems(params.get("cwd"), argv if isinstance(argv, list) else None)


class ShellTask:
    """Run a program; succeed with ``{"exit_code": 0, "stdout": ..., "stderr": ...}``.

    The program gets no stdin and runs in a process group of its own. When the attempt is
    cancelled (its timeout, or the daemon shutting down), the whole group is sent SIGTERM,
    then SIGKILL after :attr:`terminate_grace_s`, so neither the program nor anything it
    started outlives the attempt.
    """

    name: ClassVar[str] = "shell"
    Params: ClassVar[type[BaseModel]] = ShellParams

    #: How long a cancelled program has between SIGTERM and SIGKILL.
    terminate_grace_s: float = 5.0

    async def execute(self, params: ShellParams, ctx: TaskContext) -> Any:
        """Run the program described by ``params`` to completion.

        :param params: the validated parameters
        :param ctx: the attempt's context
        :return: ``{"exit_code": 0, "stdout": <tail>, "stderr": <tail>}``, the tails
            decoded as UTF-8 with undecodable bytes replaced
        :raises PermanentTaskError: if the executable or the working directory does not
            exist or cannot be used
        :raises TaskError: if the program exits with a non-zero code or by a signal
        """
        command: str | list[str]
        if params.argv is not None:
            command = params.argv
            what = f"Program {params.argv[0]!r}"
        else:
            assert params.command is not None
            command = params.command
            what = f"Command {params.command[:_ERROR_COMMAND_CHARS]!r}"

        # What the program needs to deduplicate its own side effects across retries and
        # restarts: the idempotency key is the same on every attempt of this instance.
        wanted = ProgramEnv.read(params.env)
        env = program_env((*ctx.pass_env, *wanted.names))
        env.update(
            CUED_RUN_ID=ctx.run_id,
            CUED_PIPELINE=ctx.pipeline,
            CUED_TASK=ctx.task,
            CUED_ATTEMPT=str(ctx.attempt),
            CUED_IDEMPOTENCY_KEY=ctx.idempotency_key,
        )
        env.update(wanted.values)
        try:
            done = await run_program(
                command,
                env=env,
                cwd=params.cwd,
                tail_bytes=params.output_tail_bytes,
                terminate_grace_s=self.terminate_grace_s,
                on_line=ctx.log_line,
            )
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            # The child reports a failed chdir with the directory as the file name.
            if params.cwd is not None and exc.filename == params.cwd:
                raise PermanentTaskError(
                    f"Working directory {params.cwd!r} cannot be used: {exc.strerror}"
                ) from exc
            if isinstance(exc, FileNotFoundError):
                raise PermanentTaskError(f"{what} was not found") from exc
            raise PermanentTaskError(f"{what} cannot be executed: {exc.strerror}") from exc
        except OSError as exc:
            # Out of processes or file descriptors, say: may well pass.
            raise TaskError(f"{what} could not be started: {exc}") from exc

        exit_code = done.exit_code
        if exit_code != 0:
            lines = done.stderr.rstrip("\n").splitlines()[-_ERROR_STDERR_LINES:]
            how = (
                f"was killed by {_signal_name(-exit_code)}"
                if exit_code < 0
                else f"exited with code {exit_code}"
            )
            detail = ":\n" + "\n".join(lines) if lines else " (stderr was empty)"
            raise TaskError(f"{what} {how}{detail}")

        return {"exit_code": exit_code, "stdout": done.stdout, "stderr": done.stderr}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
