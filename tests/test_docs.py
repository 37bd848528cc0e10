"""Every example in README.md and docs/*.md is run, or at least parsed by the real parser.

The fenced code blocks (``` or ~~~) of README.md and docs/*.md are collected; a block's language
is the first word after its fence. Blocks of other languages, or of none, are not examples.

``python`` (or ``py``) blocks are executed as printed, each in a fresh namespace and an empty
temporary working directory, as a reader pasting it into a new session would (so a block must
import what it uses and define its data: use the embedded ``digits`` dataset and small sizes).
An HTML comment just before the fence (blank lines between are allowed) changes that:

    <!-- doctest: needs-data NAME [NAME ...] -->
        The block loads these datasets (both splits): it is skipped unless they are present on
        this machine (``model-extraction datasets``; nothing is downloaded).
    <!-- doctest: needs FILE [FILE ...] -->
        The block reads FILE, written by a shell command shown earlier on the page. A
        ``.safetensors`` FILE is stood in for by ``ReLUNetwork.random(64, 16, 10, seed=0)`` (the
        shape ``model-extraction extract --hidden 16`` saves); other files have no stand-in
        (the test fails: extend ``stand_in``).
    <!-- doctest: skip REASON -->
        Not run (say why; for a block that cannot run here at all).

These markers apply to python blocks only.

``bash`` (or ``sh``, ``shell``) blocks are not run as a whole. Each command of them (``\\``
continuations joined, ``#`` comments dropped, ``&&``, ``||``, ``;`` and ``|`` separating
commands, leading ``NAME=value`` assignments set aside) is checked if it is one of ours:

* ``model-extraction ARGS`` (or ``python -m model_extraction ARGS``) is parsed by the Typer app
  of ``model_extraction.cli``, strictly: an unknown command or option, a missing argument or a
  bad value fails. Each ``*.safetensors`` argument that does not exist is stood in for first,
  as above (an earlier command of the page writes it, and that command was not run).
  ``datasets`` is also run for real, and ``serve`` with ``--dry-run`` added; the other
  commands train or attack, and are only parsed.
* ``python benchmarks/NAME.py ARGS`` is parsed by that benchmark's argparse parser: its
  ``build_parser()`` when it has one, else its ``parse_args(argv)``, else its ``main`` is
  called with ``ArgumentParser.parse_args`` stopped right after parsing.
* ``python -c CODE``: CODE is compiled (not run: such lines talk to a server).
* An assignment ``NAME=value`` must name a variable the package or the benchmarks read.

Anything else (pip, pytest, ray, curl, export, cd, ...) is not ours and is ignored. A failure
names the page, the line and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import re
import shlex
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}
MARKERS = {"needs-data", "needs", "skip"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", ">&", "&>", "<&", ">|"}
STAND_IN_SHAPE = (64, 16, 10)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*doctest:\s*(?P<body>.*?)\s*-->\s*$")
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the block's first line of code
    lang: str
    code: str
    markers: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str  # the logical line as printed
    env: tuple[tuple[str, str], ...]
    kind: str  # "cli", "benchmark" or "code"
    target: str  # the benchmark's name, or the code
    args: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.text.strip()}"


def read_blocks(page: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown page, with the doctest markers just before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence = m["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        markers = []
        k = i - 1
        while k >= 0 and (not lines[k].strip() or _MARKER.match(lines[k])):
            if lines[k].strip():
                words = _MARKER.match(lines[k])["body"].split()
                markers.append((words[0] if words else "", tuple(words[1:])))
            k -= 1
        info = m["info"].split()
        yield Block(page, i + 2, info[0].lower() if info else "",
                    textwrap.dedent("\n".join(lines[i + 1:end])), tuple(reversed(markers)))
        i = end + 1


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each command line, ``\\`` continuations joined."""
    first, parts = None, []
    for k, raw in enumerate(block.code.splitlines()):
        first = block.line + k if first is None else first
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(raw)
        yield first, " ".join(parts)
        first, parts = None, []
    if parts:
        yield first, " ".join(parts)


def split_commands(text: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, as argv lists (redirections dropped)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv: list[str] = []
    skip_next = False
    for token in [*lexer, ";"]:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            if argv:
                yield argv
            argv = []
        elif token in REDIRECTS:
            if argv and argv[-1].isdigit():  # 2>file
                argv.pop()
            skip_next = True
        elif token not in {"(", ")"}:
            argv.append(token)


def classify(page: Path, line: int, text: str, argv: list[str]) -> Command | None:
    """Our command (see the module's docstring), or None for anyone else's."""
    env = []
    while argv and _ASSIGNMENT.match(argv[0]):
        m = _ASSIGNMENT.match(argv.pop(0))
        env.append((m["name"], m["value"]))
    if not argv:
        return None
    program, rest = argv[0], argv[1:]

    def command(kind: str, target: str, args: list[str]) -> Command:
        return Command(page, line, text, tuple(env), kind, target, tuple(args))

    if program == "model-extraction":
        return command("cli", "", rest)
    if program in {"python", "python3"} and rest:
        if rest[:2] == ["-m", "model_extraction"]:
            return command("cli", "", rest[2:])
        if rest[0] == "-c" and len(rest) > 1:
            return command("code", rest[1], [])
        script = Path(rest[0])
        if script.parent.name == "benchmarks" and script.suffix == ".py":
            return command("benchmark", script.stem, rest[1:])
    return None


def collect() -> tuple[list[Block], list[Command]]:
    blocks = [b for page in PAGES for b in read_blocks(page)]
    commands = []
    for b in blocks:
        if b.lang in SHELL:
            for line, text in logical_lines(b):
                for argv in split_commands(text):
                    c = classify(b.page, line, text, argv)
                    if c is not None:
                        commands.append(c)
    return blocks, commands


BLOCKS, COMMANDS = collect()
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in PYTHON]


# -- checks ----------------------------------------------------------------------------------

def stand_in(path: Path, where: str) -> None:
    """Write a stand-in for a file a shell command of the page would have written."""
    if path.suffix != ".safetensors":
        pytest.fail(f"{where}\n  no stand-in for {path.name} (only .safetensors files have one)",
                    pytrace=False)
    from model_extraction.network import ReLUNetwork

    path.parent.mkdir(parents=True, exist_ok=True)
    ReLUNetwork.random(*STAND_IN_SHAPE, seed=0, metadata={"dataset": "digits"}).save(path)


def cli_context(args: list[str]) -> Any:
    """Parse ``model-extraction ARGS`` as the installed command would; the sub-command's
    context (its ``params``), or an exception with ``format_message()``."""
    import typer

    from model_extraction.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("model-extraction", list(args), resilient_parsing=False)
    rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
    name, sub, sub_args = group.resolve_command(ctx, rest)
    return sub.make_context(name, sub_args, parent=ctx, resilient_parsing=False)


def check_cli(c: Command, workdir: Path) -> None:
    for arg in c.args:  # the files earlier commands of the page write, not run here
        if arg.endswith(".safetensors") and not (workdir / arg).exists():
            stand_in(workdir / arg, c.where)
    try:
        ctx = cli_context(list(c.args))
    except Exception as err:  # click's UsageError and kin, typer's vendored or not
        if getattr(err, "exit_code", None) == 0:  # --help
            return
        message = err.format_message() if hasattr(err, "format_message") else repr(err)
        pytest.fail(f"{c.where}\n  does not parse: {message}", pytrace=False)
    name = ctx.info_name
    if name not in {"datasets", "serve"}:
        return
    from typer.testing import CliRunner

    from model_extraction.cli import app

    args = list(c.args)
    if name == "serve" and not ctx.params["dry_run"]:
        args.append("--dry-run")
    res = CliRunner().invoke(app, args, env=dict(c.env))
    if res.exit_code != 0:
        pytest.fail(f"{c.where}\n  exit code {res.exit_code} (run as `model-extraction "
                    f"{shlex.join(args)}`):\n{res.output}{res.exception or ''}", pytrace=False)


class _Parsed(Exception):
    pass


def load_benchmark(name: str) -> Any:
    """``benchmarks/NAME.py`` imported as a module (None if there is no such file)."""
    path = ROOT / "benchmarks" / f"{name}.py"
    if not path.exists():
        return None
    module_name = f"_doc_benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def parse_benchmark(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse ``python benchmarks/NAME.py ARGV`` with the benchmark's own parser (SystemExit on
    an error, as argparse does)."""
    module = load_benchmark(name)
    if module is None:
        raise FileNotFoundError(f"benchmarks/{name}.py does not exist")
    if hasattr(module, "build_parser"):
        module.build_parser().parse_args(argv)
    elif hasattr(module, "parse_args"):
        module.parse_args(argv)
    else:  # stop main() right after it parsed its arguments
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self: argparse.ArgumentParser, args: Any = None,
                            namespace: Any = None) -> Any:
            raise _Parsed(original(self, argv, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *argv])
        with pytest.raises(_Parsed):
            module.main()


def check_benchmark(c: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_benchmark(c.target, list(c.args), monkeypatch)
    except FileNotFoundError as err:
        pytest.fail(f"{c.where}\n  {err}", pytrace=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            pytest.fail(f"{c.where}\n  does not parse:\n{stderr.getvalue()}", pytrace=False)


@functools.cache
def known_variables() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for folder in ("model_extraction", "benchmarks")
                     for p in (ROOT / folder).rglob("*.py"))


# -- tests -----------------------------------------------------------------------------------

@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Small examples train several times faster on one thread of a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_pages_have_examples() -> None:
    """The collector finds what the pages hold (a fence it misread would hide examples)."""
    assert PYTHON_BLOCKS, "no python block found in README.md or docs/"
    assert any(c.kind == "cli" for c in COMMANDS), "no model-extraction command found"
    assert any(c.kind == "benchmark" for c in COMMANDS), "no benchmark command found"
    for b in BLOCKS:
        for kind, words in b.markers:
            assert kind in MARKERS, f"{b.where}: unknown doctest marker {kind!r}"
            assert b.lang in PYTHON, f"{b.where}: doctest markers apply to python blocks only"
            assert words or kind != "needs-data", f"{b.where}: needs-data names no dataset"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_python_example_runs(block: Block, workdir: Path, one_thread: None) -> None:
    for kind, words in block.markers:
        if kind == "skip":
            pytest.skip(" ".join(words) or "marked skip")
        if kind == "needs-data":
            from model_extraction.datasets import canonical_name, dataset_report

            present = {(r["name"], r["split"]) for r in dataset_report(verify=False)
                       if r["source"] is not None}
            missing = [w for w in words
                       if not {(canonical_name(w), s) for s in ("train", "test")} <= present]
            if missing:
                pytest.skip(f"needs the datasets {', '.join(missing)}")
        if kind == "needs":
            for name in words:
                stand_in(workdir / name, block.where)
    # Line numbers of a traceback are the page's.
    source = "\n" * (block.line - 1) + block.code
    code = compile(source, str(block.page), "exec")
    exec(code, {"__name__": "__main__"})


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where}"[:120])
def test_shell_command_parses(command: Command, workdir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name, _ in command.env:
        if name not in known_variables():
            pytest.fail(f"{command.where}\n  nothing in model_extraction/ or benchmarks/ reads "
                        f"${name}", pytrace=False)
    if command.kind == "cli":
        check_cli(command, workdir)
    elif command.kind == "benchmark":
        check_benchmark(command, monkeypatch)
    else:
        try:
            compile(command.target, f"{command.where} (python -c)", "exec")
        except SyntaxError as err:
            pytest.fail(f"{command.where}\n  python -c: {err}", pytrace=False)


# -- the checks themselves can fail ------------------------------------------------------------

@pytest.mark.parametrize(
    "line",
    [
        "model-extraction extract --no-such-option",
        "model-extraction extract --hidden many",
        "model-extraction extract --mode cleverest",
        "model-extraction no-such-command",
        "model-extraction serve",  # the victim argument is required
        "MODEL_EXTRACTION_DATA=x model-extraction serve victim.safetensors --port 8000 --bogus",
        "python benchmarks/limits.py --no-such-option",
        "python benchmarks/functional.py --no-such-option",
        "python benchmarks/learning.py --steps many",
        "python benchmarks/no_such_benchmark.py",
        "python -c 'print('",
        "MODEL_EXTRACTON_DATA=path/to/data model-extraction datasets",  # a typo
    ],
)
def test_a_wrong_command_fails(line: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = ROOT / "README.md"
    (argv,) = split_commands(line)
    command = classify(page, 1, line, argv)
    assert command is not None
    with pytest.raises(pytest.fail.Exception, match="README.md:1: "):
        test_shell_command_parses(command, workdir, monkeypatch)


def test_collector_reads_fences_markers_and_shell_syntax(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent("""\
        Text.

        <!-- doctest: needs victim.safetensors -->

        ```python
        x = 1
        ```

        1. In a list:

           ```bash
           pip install -e . && model-extraction extract \\
               --hidden 16   # a comment
           A=1 B=2 python benchmarks/limits.py --quick 2>/dev/null; curl x | python -c "print(1)"
           ```
        ~~~
        model-extraction not-an-example
        ~~~
        """))
    blocks = list(read_blocks(page))
    assert [(b.line, b.lang, b.markers) for b in blocks] == [
        (6, "python", (("needs", ("victim.safetensors",)),)),
        (12, "bash", ()),
        (17, "", ()),
    ]
    assert blocks[0].code == "x = 1"
    commands = [classify(page, line, text, argv) for line, text in logical_lines(blocks[1])
                for argv in split_commands(text)]
    ours = [(c.line, c.kind, c.target, c.args, c.env) for c in commands if c is not None]
    assert ours == [
        (12, "cli", "", ("extract", "--hidden", "16"), ()),
        (14, "benchmark", "limits", ("--quick",), (("A", "1"), ("B", "2"))),
        (14, "code", "print(1)", (), ()),
    ]
