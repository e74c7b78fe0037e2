"""The package map of docs/design.md, checked on the source with `ast` (nothing here is imported).

Floors, bottom to top: core/ (0); pool/ and audit/ (1, each on core only); sessions/ (2, on core and
pool, never audit); relay/ (3); maskline/ (4); bench/ (5, outside the wheel, imported by nothing).
migrations/ holds SQL files and imports nothing. Every import statement counts, wherever it sits
(inside functions, under TYPE_CHECKING), at module granularity.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"core": 0, "pool": 1, "audit": 1, "sessions": 2, "relay": 3, "maskline": 4, "bench": 5}
PACKAGES = (*FLOORS, "migrations")
# What each package may import (first-party), itself included. The authority for the rules below.
ALLOWED = {
    "core": {"core"},
    "pool": {"core", "pool"},
    "audit": {"core", "audit"},
    "sessions": {"core", "pool", "sessions"},
    "relay": {"core", "pool", "audit", "sessions", "relay"},
    "maskline": {"core", "pool", "audit", "sessions", "relay", "maskline", "migrations"},
    "bench": set(PACKAGES),
    "migrations": set(),
}
DOMAIN = ("core", "pool", "sessions", "audit")
# Every .py file of these folders counts for the line rule and the path mentions in comments.
SOURCE_DIRS = (*PACKAGES, "tests", "docs")
MAX_LINES = 420
# The one Python module that loads Lua; bench/ and tests/ may load scripts by hand.
LUA_LOADER = "core.scripts"
SCRIPT_LOADING_CALLS = {"register_script", "script_load"}
MAY_LOAD_SCRIPTS = ("bench", "tests")
# A repo path named in prose: <folder>/<path>.py|.lua|.md|.sql, <folder> a package, tests or docs.
PATH_MENTION = re.compile(
    r"(?<![\w./-])((?:"
    + "|".join((*PACKAGES, "tests", "docs"))
    + r")/[\w./-]*?\.(?:py|lua|md|sql))(?![\w/-])"
)


@dataclass(frozen=True)
class Import:
    importer: str  # module doing the import, e.g. "sessions.routing"
    target: str  # first-party module imported, e.g. "pool.numbers"
    where: str  # "sessions/routing.py:12"
    statement: str  # "from pool.numbers import e164"

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.target} (`{self.statement}`)"


def _files(dirs: tuple[str, ...], pattern: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob(pattern) if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@cache
def _modules() -> dict[str, Path]:
    """Every first-party module (packages included) of the floors, by dotted name."""
    return {_module_name(p): p for p in _files(PACKAGES, "*.py")}


def _resolve(name: str) -> str | None:
    """The first-party module an imported dotted name lands in (the longest existing prefix)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in _modules():
            return ".".join(parts[:end])
    return parts[0]  # a missing module of a first-party package still counts as that package


def _imports_of(path: Path) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """(statement, first-party module) for every import anywhere in the file."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := _resolve(alias.name)) is not None:
                    yield node, target
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{_rel(path)}:{node.lineno}: relative import (the repo uses none)"
            base = node.module or ""
            for alias in node.names:
                # `from pkg import mod` lands in pkg.mod, `from pkg.mod import name` in pkg.mod.
                if (target := _resolve(f"{base}.{alias.name}")) is not None:
                    yield node, target


@cache
def _graph() -> tuple[Import, ...]:
    found: dict[tuple[str, str, int], Import] = {}
    for module, path in _modules().items():
        for node, target in _imports_of(path):
            if target != module:
                where = f"{_rel(path)}:{node.lineno}"
                found.setdefault(
                    (module, target, node.lineno), Import(module, target, where, ast.unparse(node))
                )
    return tuple(found.values())


def _package(module: str) -> str:
    return module.split(".")[0]


def _expect_none(title: str, problems: list[str]) -> None:
    """Fail with one line per problem (file:line, module, import), without the assert's repr noise."""
    if problems:
        pytest.fail(f"{title} ({len(problems)}):\n  " + "\n  ".join(problems), pytrace=False)


def test_the_floors_hold_every_package_of_the_wheel_and_bench() -> None:
    on_disk = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert on_disk == set(PACKAGES), (
        "packages on disk and the floors of this test differ: "
        f"unknown {sorted(on_disk - set(PACKAGES))}, missing {sorted(set(PACKAGES) - on_disk)}"
    )
    assert len(_graph()) > 50, "the import graph looks empty: is the module walk broken?"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_floor_allows(package: str) -> None:
    bad = [
        f"{imp}: {package}/ may import only {sorted(ALLOWED[package] - {package}) or 'nothing first-party'}"
        for imp in _graph()
        if _package(imp.importer) == package and _package(imp.target) not in ALLOWED[package]
    ]
    _expect_none(f"imports {package}/ may not make", bad)


def test_no_import_from_a_lower_floor_to_a_higher_one() -> None:
    bad = [
        f"{imp}: floor {FLOORS[_package(imp.importer)]} -> floor {FLOORS[_package(imp.target)]}"
        for imp in _graph()
        if _package(imp.importer) in FLOORS
        and _package(imp.target) in FLOORS
        and FLOORS[_package(imp.importer)] < FLOORS[_package(imp.target)]
    ]
    _expect_none("imports that point up the floors", bad)


@pytest.mark.parametrize(
    ("rule", "importers", "forbidden"),
    [
        pytest.param(
            "the domain never imports relay/ or maskline/",
            DOMAIN,
            ("relay", "maskline", "bench"),
            id="domain-not-edge",
        ),
        pytest.param(
            "pool/ imports neither sessions/ nor audit/", ("pool",), ("sessions", "audit"), id="pool"
        ),
        pytest.param("sessions/ never imports audit/", ("sessions",), ("audit",), id="sessions"),
        pytest.param(
            "pool/ and audit/ import only core/",
            ("pool", "audit"),
            tuple(p for p in PACKAGES if p != "core"),
            id="pool-audit-only-core",
        ),
    ],
)
def test_named_rule(rule: str, importers: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    bad = [
        str(imp)
        for imp in _graph()
        if _package(imp.importer) in importers
        and _package(imp.target) in set(forbidden) - {_package(imp.importer)}
    ]
    _expect_none(f"broken rule: {rule}", bad)


def test_migrations_import_nothing() -> None:
    bad = [
        f"{_rel(path)}:{node.lineno}: `{ast.unparse(node)}`"
        for path in _files(("migrations",), "*.py")
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Import | ast.ImportFrom)
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    ]
    _expect_none("migrations/ holds SQL files only and imports nothing", bad)


def test_nothing_imports_bench_statically() -> None:
    bad = [str(imp) for imp in _graph() if _package(imp.target) == "bench" != _package(imp.importer)]
    for path in _files(("tests",), "*.py"):
        bad += [
            f"{_rel(path)}:{node.lineno}: `{ast.unparse(node)}`"
            for node, target in _imports_of(path)
            if _package(target) == "bench"
        ]
    _expect_none("static imports of bench/ (maskline finds it by name at run time)", bad)


def _cycle_through(start: str, edges: dict[str, dict[str, Import]], members: set[str]) -> list[Import]:
    """A shortest import circle from `start` back to itself, inside one strongly connected part."""
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target, imp in sorted(edges[module].items()):
            if target == start:
                return [*paths[module], imp]
            if target in members and target not in paths:
                paths[target] = [*paths[module], imp]
                queue.append(target)
    raise AssertionError(f"no circle through {start}")  # pragma: no cover


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's strongly connected components, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = set()
                    while (member := stack.pop()) != node:
                        on_stack.discard(member)
                        part.add(member)
                    on_stack.discard(node)
                    parts.append(part | {node})
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return parts


def test_no_import_circle() -> None:
    edges: dict[str, dict[str, Import]] = {module: {} for module in _modules()}
    for imp in _graph():
        edges[imp.importer].setdefault(imp.target, imp)
    circles = []
    for part in _strongly_connected(edges):
        if len(part) > 1:
            circle = _cycle_through(min(part), edges, part)
            steps = "\n      ".join(str(imp) for imp in circle)
            circles.append(
                f"{' -> '.join([*(i.importer for i in circle), circle[0].importer])}\n      {steps}"
            )
    _expect_none("import circles", circles)


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {_rel(p): len(p.read_text().splitlines()) for p in _files(SOURCE_DIRS, "*.py")}
    bad = [f"{path}: {n} lines" for path, n in sorted(sizes.items(), key=lambda i: -i[1]) if n > MAX_LINES]
    _expect_none(f"modules over {MAX_LINES} lines (split them by job)", bad)


def _lua_files() -> list[Path]:
    return _files(PACKAGES, "*.lua")


def _lua_header(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line)
    return header


def test_every_lua_file_starts_with_a_comment_header() -> None:
    assert _lua_files(), "no .lua file found"
    bad = [_rel(p) for p in _lua_files() if not any(line.strip("- ") for line in _lua_header(p))]
    _expect_none("Lua files whose first line is not a `--` comment header", bad)


def test_every_lua_script_header_lists_keys_argv_and_returns() -> None:
    bad = []
    for path in _lua_files():
        if not path.name.startswith("_"):
            header = "\n".join(_lua_header(path))
            missing = [word for word in ("KEYS[", "ARGV[", "Returns") if word not in header]
            if missing:
                bad.append(f"{_rel(path)}: header names no {', '.join(missing)}")
    _expect_none("Lua script headers (design.md: KEYS/ARGV/returns)", bad)


def test_lua_scripts_are_loaded_only_through_core_scripts() -> None:
    bad = []
    for path in _files(PACKAGES, "*.py"):
        module = _module_name(path)
        if module == LUA_LOADER or _package(module) in MAY_LOAD_SCRIPTS:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in SCRIPT_LOADING_CALLS:
                    bad.append(f"{_rel(path)}:{node.lineno}: `{ast.unparse(node)[:80]}`")
    _expect_none(f"Lua loaded outside {LUA_LOADER} (use a LuaLibrary and Scripts)", bad)


def test_every_lua_folder_belongs_to_a_library_of_the_loader() -> None:
    """A `.lua` file lives in <package>/lua/, whose <package>/scripts.py reaches core/scripts.py."""
    edges: dict[str, set[str]] = {}
    for imp in _graph():
        edges.setdefault(imp.importer, set()).add(imp.target)

    def reaches_loader(module: str, seen: set[str]) -> bool:
        if module == LUA_LOADER:
            return True
        seen.add(module)
        return any(reaches_loader(t, seen) for t in edges.get(module, ()) if t not in seen)

    bad = []
    for folder in sorted({p.parent for p in _lua_files()}):
        scripts = f"{_module_name(folder.parent / '__init__.py')}.scripts"
        if folder.name != "lua" or scripts not in _modules() or not reaches_loader(scripts, set()):
            bad.append(f"{_rel(folder)}/: no {scripts.replace('.', '/')}.py building on {LUA_LOADER}")
    _expect_none("Lua folders the loader does not know", bad)


def _py_prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    yield body[0].lineno, body[0].value.value


def _lua_prose(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if "--" in line:
            yield number, line[line.index("--") :]


def test_paths_named_in_comments_exist() -> None:
    prose = [(path, *item) for path in _files(SOURCE_DIRS, "*.py") for item in _py_prose(path)]
    prose += [(path, *item) for path in _lua_files() for item in _lua_prose(path)]
    bad = [
        f"{_rel(path)}:{line}: names {mention}, which does not exist"
        for path, line, text in prose
        for mention in PATH_MENTION.findall(text)
        if not (ROOT / mention).exists()
    ]
    _expect_none("stale file paths in comments and docstrings", bad)
