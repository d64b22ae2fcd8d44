"""Every example of the README and of docs/ run against the real server, as a reader would run it.

A ```bash block's curl commands are sent as written (method, headers, body); when a ```json block
follows, its values are the answers of the block's last curls, compared with what the server says:
the same keys, strings and integers, and numbers as close as the digits shown. A block whose first
line is `VAR=value ... make serve` runs against a server with those settings, and so does the rest
of its page (the reader's server is still that one), until another `make serve` line. An answer shown with
"..." only has to come back 2xx. A ```python block runs as it is, and each `expression  # literal`
line in it must give that literal.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT, free_port, model_repository, start_server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
SERVE = re.compile(r"^((?:[A-Z_]+=\S+ )*)make serve\s*$")
VOLATILE = {"created", "id", "resident_bytes"}  # a time, a fresh id, a measurement


@dataclass
class Example:
    page: str
    line: int
    env: dict[str, str]
    commands: list[list[str]]  # each curl's arguments
    answers: str | None  # the json block after it


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        blocks = list(FENCE.finditer(text))
        env: dict[str, str] = {}
        for i, block in enumerate(blocks):
            if block.group(1) != "bash" or "curl " not in block.group(2):
                continue
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            answers = None
            if following and following.group(1) == "json" and not text[block.end() : following.start()].strip():
                answers = following.group(2)
            body = block.group(2)
            first = body.splitlines()[0]
            if SERVE.match(first):
                env = dict(kv.split("=", 1) for kv in SERVE.match(first).group(1).split())
            commands = [c for c in shlex_commands(body) if c and c[0] == "curl"]
            found.append(Example(page.name, text[: block.start()].count("\n") + 1, env, commands, answers))
    return found


def shlex_commands(body: str) -> list[list[str]]:
    """The block's commands: lines joined where a quote is open or a backslash continues them."""
    commands, pending = [], ""
    for line in body.splitlines():
        pending += line + "\n"
        if pending.count("'") % 2 == 0 and not line.endswith("\\"):
            commands.append(shlex.split(pending.replace("\\\n", " "), comments=True))
            pending = ""
    return commands


def request(base: str, args: list[str]) -> httpx.Response:
    url, method, headers, body = "", "GET", {}, None
    it = iter(args[1:])
    for a in it:
        if a == "-X":
            method = next(it)
        elif a == "-H":
            k, v = next(it).split(":", 1)
            headers[k.strip()] = v.strip()
        elif a == "-d":
            body, method = next(it), "POST" if method == "GET" else method
        elif a.startswith("localhost:8000"):
            url = base + a[len("localhost:8000") :]
    return httpx.request(method, url, headers=headers, content=body, timeout=60)


class Shown(float):
    """A number as the page shows it: how many decimals it has says how close it must be."""

    def __new__(cls, text: str) -> Shown:
        self = super().__new__(cls, text)
        self.decimals = len(text.split(".")[1].lower().split("e")[0]) if "." in text else 0
        return self


def shown_values(text: str) -> list | None:
    decoder, values, pos = json.JSONDecoder(parse_float=Shown), [], 0
    text = text.strip()
    try:
        while pos < len(text):
            value, pos = decoder.raw_decode(text, pos)
            values.append(value)
            while pos < len(text) and text[pos].isspace():
                pos += 1
    except json.JSONDecodeError:
        return None  # elided with "..."
    return values


def same(shown, served, where: str = "") -> list[str]:
    if isinstance(shown, dict):
        if not isinstance(served, dict) or set(shown) != set(served):
            keys = sorted(served) if isinstance(served, dict) else served
            return [f"{where}: keys {sorted(shown)} shown, {keys!r:.200} served"]
        return [p for k in shown if k not in VOLATILE for p in same(shown[k], served[k], f"{where}.{k}")]
    if isinstance(shown, list):
        if not isinstance(served, list) or len(shown) != len(served):
            return [f"{where}: {len(shown)} items shown, {served!r:.200} served"]
        return [p for i, (a, b) in enumerate(zip(shown, served, strict=True)) for p in same(a, b, f"{where}[{i}]")]
    if isinstance(shown, Shown):
        close = isinstance(served, int | float) and abs(served - shown) <= 10.0**-shown.decimals
        return [] if close else [f"{where}: {shown} shown, {served} served"]
    return [] if shown == served else [f"{where}: {shown!r} shown, {served!r} served"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, toy_bundle):
    started: dict[tuple, object] = {}
    tmp = tmp_path_factory.mktemp("docs")

    def get(env: dict[str, str]):
        key = tuple(sorted(env.items()))
        if key not in started:
            repository = model_repository(tmp / f"repo{len(started)}", toy_bundle)
            started[key] = start_server(repository, tmp, MODEL_DIR="", MODEL_REPOSITORY=repository, **env)
        return started[key]

    yield get
    for server in started.values():
        server.stop()


ALL = examples()


@pytest.mark.parametrize("example", ALL, ids=[f"{e.page}:{e.line}" for e in ALL])
def test_the_example_answers_as_shown(example, servers):
    server = servers(example.env)
    answers = [request(server.url, c) for c in example.commands]
    shown = shown_values(example.answers) if example.answers is not None else None
    checked = answers[len(answers) - len(shown) :] if shown else []
    for r in answers[: len(answers) - len(checked)]:
        assert r.status_code < 300, (r.request.url, r.status_code, r.text[:300])
    if example.answers is not None and shown is None:
        assert answers[-1].status_code < 300
    for value, r in zip(shown or [], checked, strict=True):
        problems = same(value, r.json())
        assert problems == [], (str(r.request.url), problems[:5])


PYTHON = [
    (page.name, text[: m.start()].count("\n") + 1, m.group(2))
    for page in PAGES
    for text in [page.read_text()]
    for m in FENCE.finditer(text)
    if m.group(1) == "python" and ("localhost:8000" in m.group(2) or "localhost:8001" in m.group(2))
]
GRPC_PORT = free_port()  # the gRPC examples' server listens here


@pytest.mark.parametrize("page,line,code", PYTHON, ids=[f"{p}:{n}" for p, n, _ in PYTHON])
def test_the_python_example_runs_and_gives_what_it_shows(page, line, code, servers):
    grpc = "localhost:8001" in code
    server = servers({"GRPC_PORT": str(GRPC_PORT)} if grpc else {})
    code = code.replace("http://localhost:8000", server.url).replace("localhost:8000", server.url.split("//")[1])
    code = code.replace("localhost:8001", f"127.0.0.1:{GRPC_PORT}")
    scope: dict = {}
    checks = []
    for statement in ast.parse(code).body:
        source = ast.get_source_segment(code, statement) or ""
        end = code.splitlines()[statement.end_lineno - 1]
        comment = end.split("  # ", 1)[1] if "  # " in end else None
        exec(compile(ast.Module([statement], []), f"{page}:{line}", "exec"), scope)
        if isinstance(statement, ast.Expr) and comment and not source.startswith("print("):
            try:
                expected = ast.literal_eval(comment)
            except (ValueError, SyntaxError):
                continue  # a comment in words, or a printed array
            checks.append((source, expected, eval(source, scope)))
    for source, expected, got in checks:
        assert got == expected, (source, expected, got)
