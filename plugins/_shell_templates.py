"""What ``cued validate`` says of templates in a ``shell`` task's program and scripts.

A heuristic over the text as written, not a shell parser: it knows the shapes a
template turns into code in (the program itself, ``sh -c SCRIPT``, ``python -c CODE``,
an unquoted here-document) and says nothing of programs that run their arguments in
other ways (``ssh host CMD``, ``su -c``, ``find -exec``, ``xargs``, ``timeout 5 sh -c``).
"""

from __future__ import annotations

import os.path
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jinja2 import nodes

from cued.daemon.sdk import (
    SHELL_QUOTE_FILTERS,
    ParamProblem,
    TemplateProblem,
    has_template,
    parse_template,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["argv_problems", "command_problems", "cwd_problems"]

#: Programs that run their ``-c`` operand as a shell script.
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"})

#: Interpreters and the options whose operand they run as code, in their language.
_INTERPRETERS = {
    "python": ("-c",),
    "pypy": ("-c",),
    "perl": ("-e", "-E"),
    "ruby": ("-e",),
    "node": ("-e", "--eval", "-p", "--print"),
    "nodejs": ("-e", "--eval", "-p", "--print"),
    "php": ("-r",),
}
_VERSIONED = re.compile(r"^(?P<name>[a-z]+?)[0-9.]*$")

#: Shell options whose value is the next argument (``-o pipefail``, bash's ``-O extglob``).
_SHELL_VALUED = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
#: ``env``'s options whose value is the next argument.
_ENV_VALUED = frozenset({"-u", "-C", "-S", "-P", "--unset", "--chdir", "--split-string"})

#: What ends the word after ``<<`` (a here-document's delimiter), outside quotes.
_WORD_END = frozenset(" \t\n;&|<>()")


def argv_problems(argv: Sequence[Any]) -> Iterator[ParamProblem]:
    """A template in the program (``argv[0]``, or what ``env`` or ``busybox`` runs):
    refused. One in the script of ``sh -c`` that ``shell_quote`` does not make a word,
    or in the code of ``python -c`` (and the like): a warning."""
    words = [w if isinstance(w, str) else "" for w in argv]
    start = _program_index(words)
    for index in range(min(start + 1, len(words))):
        if has_template(words[index].partition("=")[0] if index else words[0]):
            what = "the program" if index == start else f"an argument of {words[0]!r}"
            yield ParamProblem(
                ("argv", index),
                f"{words[index]!r}: {what} must be written out, not a template (event "
                "data would choose the code that runs); pass the value as an argument",
            )
    if start >= len(words):
        return
    program = _basename(words[start])
    if program == "busybox" and start + 1 < len(words):
        start, program = start + 1, _basename(words[start + 1])
        if has_template(words[start]):
            yield ParamProblem(
                ("argv", start),
                f"{words[start]!r}: the program busybox runs must be written out, not a "
                "template (event data would choose the code that runs)",
            )
    rest = words[start + 1 :]
    if program in _SHELLS:
        script = _shell_script(rest)
        if script is not None:
            index = start + 1 + script
            yield from _shell_code(
                words[index],
                ("argv", index),
                instead='or pass it to the script as an argument after it ("$1")',
            )
        return
    versioned = _VERSIONED.match(program)
    flags = _INTERPRETERS.get(versioned.group("name") if versioned else "", ())
    for offset, word in enumerate(rest[:-1]):
        if not word.startswith("-"):
            return  # a script file: what follows are its own arguments
        if word in flags:
            index = start + 2 + offset
            if has_template(words[index]):
                yield ParamProblem(
                    ("argv", index),
                    f"a template in the code {program} {word} runs is run as code if it "
                    "holds any, and shell_quote does not quote for it: pass the value as "
                    "an argument after the code, or in env",
                    warning=True,
                )
            return


def command_problems(command: str) -> Iterator[ParamProblem]:
    """A warning for each template of a ``command`` (run by ``/bin/sh -c``) that the
    shell could read as more than one word or as code."""
    yield from _shell_code(command, ("command",), instead="or use argv")


def cwd_problems(cwd: Any, argv: Sequence[Any] | None) -> Iterator[ParamProblem]:
    """A template in ``cwd``: refused when ``argv[0]`` is a relative path (event data
    would choose the file run), a warning otherwise (programs read code from their
    working directory: a Makefile, ``.git/config``, ``package.json``)."""
    if not (isinstance(cwd, str) and has_template(cwd)):
        return
    program = argv[0] if argv and isinstance(argv[0], str) else ""
    if "/" in program and not program.startswith("/"):
        yield ParamProblem(
            ("cwd",),
            f"must be written out, not a template, when the program is a relative path "
            f"({program!r}): event data would choose the file that runs",
        )
        return
    yield ParamProblem(
        ("cwd",),
        "a template here lets event data choose the directory the program runs in, and "
        "many read code there (a Makefile, .git/config, package.json, ./relative paths): "
        "write the directory out and pass the path as an argument",
        warning=True,
    )


def _program_index(words: list[str]) -> int:
    """Where the program is in ``words``: 0, or after ``env``'s options and
    ``NAME=value`` words (``len(words)`` if ``env`` runs none)."""
    if not words or _basename(words[0]) != "env":
        return 0
    index = 1
    while index < len(words):
        word = words[index]
        if word in _ENV_VALUED:
            index += 2
        elif word == "--":
            return index + 1
        elif word.startswith("-") or "=" in word.partition("{{")[0]:
            index += 1
        else:
            return index
    return index


def _shell_script(args: list[str]) -> int | None:
    """The index in ``args`` (a shell's arguments) of the script ``-c`` gives, if any."""
    dash_c = False
    index = 0
    while index < len(args):
        word = args[index]
        if word in ("-", "--"):
            index += 1
            break
        if word in _SHELL_VALUED:
            index += 2
            continue
        if not word.startswith(("-", "+")) or has_template(word):
            break
        if not word.startswith("--") and "c" in word[1:]:
            dash_c = True  # -c, and combined: -ec, -xc, -euc
        index += 1
    return index if dash_c and index < len(args) else None


def _basename(program: str) -> str:
    return os.path.basename(program)


def _shell_code(script: str, key: tuple[str | int, ...], *, instead: str) -> Iterator[ParamProblem]:
    """A warning for each ``{{ expression }}`` of a shell ``script`` that the shell could
    read as more than one word of text: not passed through ``shell_quote`` last, inside
    quotes (where its own quotes are text, and ``"$(...)"`` still runs), or inside a
    here-document with an unquoted delimiter (where quotes are text and ``$(...)`` runs)."""
    if not has_template(script):
        return
    try:
        tree = parse_template(script)
    except TemplateProblem:
        return  # reported with the other template checks
    scan = _Scan()
    for output in tree.find_all(nodes.Output):
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                scan.feed(node.data)
                continue
            scan.expression()
            what = _expression(node)
            quoted = isinstance(node, nodes.Filter) and node.name in SHELL_QUOTE_FILTERS
            if scan.body is not None:
                if not scan.body.quoted:
                    yield ParamProblem(
                        key,
                        f"{{{{ {what} }}}} is inside a here-document (<<{scan.body.delimiter}), "
                        "where quotes are text and $(...) runs, so shell_quote does not "
                        f"protect it: quote the delimiter (<<'{scan.body.delimiter}') to "
                        "keep the text as it is, or give the value in env",
                        warning=True,
                    )
            elif not quoted:
                yield ParamProblem(
                    key,
                    f"{{{{ {what} }}}} is run as shell code if it holds any (;, $(...), "
                    f"quotes): write {{{{ {what} | shell_quote }}}}, {instead}",
                    warning=True,
                )
            elif scan.quote is not None:
                yield ParamProblem(
                    key,
                    f"{{{{ {what} }}}} is inside {scan.quote}...{scan.quote}: shell_quote "
                    "quotes it already, leave the quotes out",
                    warning=True,
                )


@dataclass
class _HereDocument:
    delimiter: str
    quoted: bool  # <<'EOF' or <<"EOF" or <<\EOF: the body is text, nothing expands
    strip_tabs: bool  # <<-EOF: the closing line may be indented with tabs


@dataclass
class _Scan:
    """Where a shell script's text leaves off: inside which quote, or which here-document.

    Fed the text between a template's expressions, in order; an expression counts as a
    word of text that closes no quote and is no here-document's closing line.
    """

    quote: str | None = None
    body: _HereDocument | None = None
    pending: list[_HereDocument] = field(default_factory=list)  # bodies start at newline
    line: str = ""  # the body's current line so far
    line_has_expression: bool = False
    escaped: bool = False

    def expression(self) -> None:
        self.line_has_expression = True
        self.escaped = False

    def feed(self, text: str) -> None:
        index = 0
        while index < len(text):
            char = text[index]
            index += 1
            if self.body is not None:
                self._body_char(char)
            elif self.escaped:
                self.escaped = False
            elif char == "\\" and self.quote != "'":
                self.escaped = True
            elif self.quote is None and char in "'\"":
                self.quote = char
            elif char == self.quote:
                self.quote = None
            elif self.quote is None and char == "\n":
                self._start_body()
            elif self.quote is None and char == "<":
                index = self._redirection(text, index - 1)

    def _redirection(self, text: str, start: int) -> int:
        """Read a ``<<WORD`` or ``<<-WORD`` at ``start``; return where to go on."""
        if not text.startswith("<<", start) or text.startswith("<<<", start):
            return start + (3 if text.startswith("<<<", start) else 1)
        index = start + 2
        strip_tabs = text.startswith("-", index)
        index += strip_tabs
        while index < len(text) and text[index] in " \t":
            index += 1
        word, quoted, quote = [], False, None
        while index < len(text):
            char = text[index]
            if quote is None and char in _WORD_END:
                break
            index += 1
            if char == quote:
                quote = None
            elif quote is None and char in "'\"":
                quote, quoted = char, True
            elif quote is None and char == "\\" and index < len(text):
                quoted = True
                word.append(text[index])
                index += 1
            else:
                word.append(char)
        if word:
            self.pending.append(_HereDocument("".join(word), quoted, strip_tabs))
        return index

    def _start_body(self) -> None:
        if self.pending:
            self.body = self.pending.pop(0)
            self.line, self.line_has_expression = "", False

    def _body_char(self, char: str) -> None:
        assert self.body is not None
        if char != "\n":
            self.line += char
            return
        line = self.line.lstrip("\t") if self.body.strip_tabs else self.line
        closes = line == self.body.delimiter and not self.line_has_expression
        self.line, self.line_has_expression = "", False
        if closes:
            self.body = None
            self._start_body()  # the next here-document of the same command line


def _expression(node: nodes.Node) -> str:
    """A short text for an expression, as it would be written (``inputs.name``)."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_expression(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return f"{_expression(node.node)}[{node.arg.value!r}]"
    if isinstance(node, nodes.Filter) and node.node is not None:
        return f"{_expression(node.node)} | {node.name}"
    return "..."
