"""The package's architecture, checked from the source with `ast` (no torch, well under a second).

Every rule is a table below, each entry with the reason it exists, so a deliberate change of the
architecture is a one-line edit here. Every failure names the file, the line and the import or
name to fix.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "asymco"
ROOT = "asymco"

# ---------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class SourceModule:
    """One parsed file of the package, so each rule reads the source once."""

    name: str
    path: Path
    tree: ast.Module
    text: str

    @property
    def rel(self) -> str:
        """The path as a reader finds it from the repository root."""
        return self.path.relative_to(REPO).as_posix()

    @property
    def is_package(self) -> bool:
        """An `__init__.py` is the package itself: relative imports start from it."""
        return self.path.name == "__init__.py"

    def line(self, lineno: int) -> str:
        """The source line, to quote the offending statement in a failure."""
        return self.text.splitlines()[lineno - 1].strip()


class Import(NamedTuple):
    """One `asymco` import: the module it loads, where, and whether it runs only when called."""

    target: str
    lineno: int
    lazy: bool


def module_name(path: Path) -> str:
    """`src/asymco/data/__init__.py` is `asymco.data`; other files are named by their path."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, SourceModule]:
    """Every module of the package by dotted name, parsed once for the whole session."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = module_name(path)
        found[name] = SourceModule(name, path, ast.parse(text, filename=str(path)), text)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` blocks never run, so their imports make no dependency."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _import_nodes(node: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement below `node`, flagged lazy when a function body holds it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]), lazy)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy
        inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _import_nodes(child, lazy or inner)


def _from_base(module: SourceModule, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, resolving relative dots."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: SourceModule) -> list[Import]:
    """The `asymco` modules `module` imports: `from a.b import c` is `a.b.c` if that is a module."""
    known, found = modules(), []
    for node, lazy in _import_nodes(module.tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _from_base(module, node)
            full = [f"{base}.{alias.name}" for alias in node.names]
            targets = [name if name in known else base for name in full]
        for target in dict.fromkeys(targets):
            if target == ROOT or target.startswith(ROOT + "."):
                found.append(Import(target, node.lineno, lazy))
    return found


def where(module: SourceModule, imp: Import) -> str:
    """`file:line: statement (lazy)`, the address of one import in a failure message."""
    lazy = " (lazy, inside a function)" if imp.lazy else ""
    return f"{module.rel}:{imp.lineno}: {module.line(imp.lineno)}{lazy}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other through imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            cut = stack.index(node)
            components.append(sorted(stack[cut:]))
            del stack[cut:]

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """Every function and method with its qualified name, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield qualname, child
            yield from functions(child, qualname + ".")
        else:
            yield from functions(child, prefix)


def top_level_defs(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.ClassDef]:
    """Module-level functions and classes, including those under a top-level `if`/`try`."""
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt
        elif isinstance(stmt, (ast.If, ast.Try)):
            yield from top_level_defs(ast.Module(body=_branches(stmt), type_ignores=[]))


def _branches(stmt: ast.If | ast.Try) -> list[ast.stmt]:
    """All statements of every branch of an `if` or `try`, to look for definitions in them."""
    handlers = [s for h in getattr(stmt, "handlers", []) for s in h.body]
    return [*stmt.body, *stmt.orelse, *handlers, *getattr(stmt, "finalbody", [])]


def _string_arg(call: ast.Call, position: int = 0) -> str | None:
    """The literal string argument at `position` of a call, if there is one."""
    if len(call.args) > position:
        arg = call.args[position]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def _called_name(call: ast.Call) -> str:
    """`register` for `METHODS.register(...)` and `register_method` for `register_method(...)`."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _class_name(node: ast.AST | None) -> str | None:
    """`ACT` for `ACT` or `act.ACT`: how a registration names the class it registers."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


# ------------------------------------------------------------------------ 1. no import circle


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy imports included."""
    known = modules()
    return {
        name: {i.target for i in imports(module) if i.target in known}
        for name, module in known.items()
    }


def test_no_import_circle() -> None:
    graph = import_graph()
    circles = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    report = []
    for circle in circles:
        report.append("import circle: " + " <-> ".join(circle))
        for name in circle:
            module = modules()[name]
            report += [
                f"    {name} -> {i.target}: {where(module, i)}"
                for i in imports(module)
                if i.target in circle
            ]
    assert not report, "\n".join(report)


# ------------------------------------------------------------------------ 2. no upward import


class Group(NamedTuple):
    """A layer of the package: its modules and the layers it may import."""

    members: tuple[str, ...]  # exact module names, or "pkg.*" for a package and all inside it
    may_import: tuple[str, ...]


_UNDER_API = (
    "foundation",
    "config",
    "data",
    "models",
    "methods",
    "report",
    "label_issues",
    "presets",
    "own_data",
    "engine",
)

# The first group whose members match a module is its group.
GROUPS: dict[str, Group] = {
    # Leaves everyone may use: errors, the registry, atomic files, the guarded reading of
    # untrusted files, the batch type, the LR-plan grammar, durations, image ops, untrusted text
    # made safe to print and to put in a CSV.
    "foundation": Group(
        (
            "asymco._clock",
            "asymco._version",
            "asymco.durations",
            "asymco.errors",
            "asymco.text",
            "asymco.untrusted",
            "asymco.registry",
            "asymco.files",
            "asymco.batch",
            "asymco.lr_plan",
            "asymco.augment",
            "asymco.autoaugment",
            "asymco.randaugment",
        ),
        ("foundation",),
    ),
    # The typed settings and their YAML/dict round trip: data, not behaviour.
    "config": Group(("asymco.config", "asymco.config_io"), ("foundation", "config")),
    # Datasets, noise and loaders: know the settings, never a model, method or the engine.
    "data": Group(("asymco.data.*",), ("foundation", "config", "data")),
    # Networks: built from settings alone.
    "models": Group(("asymco.models.*",), ("foundation", "config", "models")),
    # Methods see batches through the foundation's Batch; never data loaders or the engine.
    "methods": Group(("asymco.methods.*",), ("foundation", "config", "methods")),
    # Reports read finished run directories (label_issues.csv among them); they train nothing.
    "report": Group(("asymco.report.*",), ("foundation", "config", "label_issues", "report")),
    # The label-issues file format and the actions it suggests: no training code.
    "label_issues": Group(
        ("asymco.label_issues", "asymco.suggest"), ("foundation", "label_issues")
    ),
    # Paper presets are settings per method.
    "presets": Group(("asymco.presets",), ("foundation", "config", "methods")),
    # The user's own data set: settings and the data layer.
    "own_data": Group(("asymco.own_data",), ("foundation", "config", "data")),
    # The engine runs a method on data and models through their interfaces.
    "engine": Group(
        ("asymco.engine.*",),
        ("foundation", "config", "data", "models", "methods", "presets", "label_issues", "engine"),
    ),
    # The programmatic entry point wires every layer below it together.
    "api": Group(("asymco.api",), (*_UNDER_API, "api")),
    # fit()/find_label_issues() for practitioners: a thin layer over the api.
    "practitioner": Group(("asymco.practitioner",), (*_UNDER_API, "api", "practitioner")),
    # Sweeps call the api, never the command line (that made the cli <-> sweep circle).
    "sweep": Group(("asymco.sweep",), (*_UNDER_API, "api", "sweep")),
    # The command line sits on top of everything but the package root.
    "cli": Group(
        ("asymco.cli", "asymco.cli_train", "asymco.__main__"),
        (*_UNDER_API, "api", "practitioner", "sweep", "cli"),
    ),
    # The package root re-exports the public names, so it may import anything.
    "root": Group(("asymco",), (*_UNDER_API, "api", "practitioner", "sweep", "cli", "root")),
}


def group_of(name: str) -> str | None:
    """The layer a module belongs to; None when the table has no place for it."""
    for group, spec in GROUPS.items():
        for pattern in spec.members:
            package = pattern.removesuffix(".*")
            if name == package or (pattern.endswith(".*") and name.startswith(package + ".")):
                return group
    return None


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_upward_import(name: str) -> None:
    module, group = modules()[name], group_of(name)
    assert group is not None, (
        f"{module.rel}: module {name} matches no group; add it to GROUPS in {Path(__file__).name}"
    )
    allowed = GROUPS[group].may_import
    bad = [
        f"{where(module, i)}\n    imports {i.target} (group {group_of(i.target)})"
        for i in imports(module)
        if group_of(i.target) not in allowed
    ]
    assert not bad, f"{name} (group {group}) may import only {', '.join(allowed)}:\n" + "\n".join(
        bad
    )


# ------------------------------------------------- 3. the training loop depends on interfaces

LOOP = "asymco.engine.loop"

# Layers the loop must not reach into: it gets batches, nets and a method handed to it.
LOOP_FORBIDDEN = {
    "asymco.data": "the loop iterates any loader it is given; the api picks the loader",
    "asymco.models": "the method builds its nets; the loop only steps their parameters",
    "asymco.methods": "the loop drives any method through the base interface",
}

# The interfaces the loop may import from those layers.
LOOP_ALLOWED = {
    "asymco.methods.base": "the Method interface the loop calls",
    "asymco.batch": "the Batch type every loader yields and every method consumes",
}


def _inside(name: str, package: str) -> bool:
    """True for the package itself and every module inside it."""
    return name == package or name.startswith(package + ".")


def test_training_loop_depends_on_interfaces_only() -> None:
    assert LOOP in modules(), f"{LOOP} not found under {SRC}; update LOOP if it moved"
    module = modules()[LOOP]
    bad = [
        f"{where(module, i)}\n    imports {i.target}: {why}"
        for i in imports(module)
        if i.target not in LOOP_ALLOWED
        for package, why in LOOP_FORBIDDEN.items()
        if _inside(i.target, package)
    ]
    assert not bad, f"{LOOP} may import only {', '.join(LOOP_ALLOWED)} from " + (
        f"{', '.join(LOOP_FORBIDDEN)}:\n" + "\n".join(bad)
    )


# -------------------------------------------------------------- 4. the engine knows no method

METHODS_DIR = SRC / "methods"

# Method names the engine must not mention even if they are not registered (yet or any more).
KNOWN_METHOD_NAMES = (
    "act",  # the method this package is about; the engine must not special-case it
    "standard",  # the single-net baseline
    "coteaching",  # Co-teaching baseline
    "coteaching_plus",  # Co-teaching+ baseline
    "co-teaching",  # how papers and docstrings spell it
    "jocor",  # JoCoR baseline
    "decoupling",  # the Decoupling baseline ACT is compared with
)

# ACT's vocabulary: where it shows in the engine, the engine knows ACT's internals.
ACT_TERMS = (
    "rtm",  # ACT's robust target model
    "ntm",  # ACT's noisy target model
    "mining",  # ACT's sample mining
    "mined",  # ... and its results
    "memorization",  # the memorisation phase ACT detects
    "memorisation",  # ... British spelling
    "dsrw",  # ACT's dynamic sample re-weighting
    "ass",  # ACT's agreement-based sample selection
    "asm",  # ACT's asymmetric sample mining
    "tau",  # the forget/selection rate of the selection methods
    "robust",  # ACT's "robust step"
    "consistency regularisation",  # ACT's loss on the strong view
    "consistency regularization",  # ... American spelling
    "agreement",  # RTM/NTM agreement drives ACT's selection
    "discrepancy",  # ... and their disagreement
)


# The calls that register a method under a name: `METHODS.register("act")`, `register_method(...)`.
REGISTER_CALLS = ("register", "register_method")


def _registrations(tree: ast.AST) -> Iterator[tuple[str | None, str | None]]:
    """(method name, class name) for each `.register("x")(Cls)`, `register_method("x", Cls)`
    and `@...register("x")` found in `tree`; either may be None where the source has no literal.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and _called_name(deco) in REGISTER_CALLS:
                    yield _string_arg(deco), node.name
        elif isinstance(node, ast.Call) and _called_name(node) in REGISTER_CALLS:
            yield _string_arg(node), _class_name(node.args[1] if len(node.args) > 1 else None)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Call)
            and _called_name(node.func) in REGISTER_CALLS
            and node.args
        ):
            yield _string_arg(node.func), _class_name(node.args[0])


def _listed_names(tree: ast.Module) -> Iterator[str]:
    """String literals in tuples, lists, sets and dict keys in a module's top-level code
    (`NAMES = ("act", ...)`, `for name, cls in (("act", ACT), ...)`, `{"act": ACT}`); functions,
    classes and `__all__` (Python names, not method names) excepted."""
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or any(
            getattr(t, "id", None) == "__all__" for t in getattr(stmt, "targets", [])
        ):
            continue
        for node in ast.walk(stmt):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
            for item in items:
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    yield item.value


@functools.cache
def registered_method_names() -> frozenset[str]:
    """The names users pick methods by, as the methods package registers them."""
    init = modules()["asymco.methods"]
    found = set(_listed_names(init.tree))
    for name, module in modules().items():
        if _inside(name, "asymco.methods"):
            found |= {n for n, _ in _registrations(module.tree) if n}
    return frozenset(found)


@functools.cache
def forbidden_engine_words() -> re.Pattern[str]:
    """One case-insensitive whole-word pattern for every method name and ACT term."""
    words = sorted({*KNOWN_METHOD_NAMES, *registered_method_names(), *ACT_TERMS}, key=len)
    alternatives = [r"[\s#]+".join(map(re.escape, w.split())) for w in reversed(words)]
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


ENGINE_MODULES = sorted(n for n in modules() if _inside(n, "asymco.engine"))


@pytest.mark.parametrize("name", ENGINE_MODULES)
def test_engine_knows_no_method(name: str) -> None:
    module = modules()[name]
    lines = module.text.splitlines()
    hits = []
    for match in forbidden_engine_words().finditer(module.text):
        lineno = module.text.count("\n", 0, match.start()) + 1
        word = " ".join(match.group().split())  # a phrase may wrap onto the next line
        hits.append(f"{module.rel}:{lineno}: [{word}] {lines[lineno - 1].strip()}")
    assert not hits, (
        f"{module.rel} names a method or an ACT term; move that into the method "
        f"(or reword a generic comment):\n" + "\n".join(hits)
    )


def test_method_names_are_found() -> None:
    """Guards rule 4: if the registrations change shape, the name scan must not go blind."""
    missing = {"act", "standard", "coteaching", "jocor"} - registered_method_names()
    assert not missing, (
        f"{modules()['asymco.methods'].rel}: no registration found for {sorted(missing)}; "
        "teach _registrations/_listed_names the new way methods are registered"
    )


# ------------------------------------------------------------------------------------ 5. size

API_FILE = "api.py"
API_MAX_LINES = 250  # the api wires layers together; more means logic that belongs in them
FUNCTION_MAX_LINES = 60  # one screen: a longer function is doing more than one thing
MODULE_MAX_LINES = 350  # one purpose per module

# Modules allowed past MODULE_MAX_LINES: path under src/asymco -> why it is still one purpose.
LONG_MODULES: dict[str, str] = {
    "autoaugment.py": (
        "the AutoAugment CIFAR-10 policy: 25 sub-policies and their 14 operations, one purpose"
    ),
}


def _line_count(module: SourceModule) -> int:
    """Lines as an editor shows them."""
    return len(module.text.splitlines())


def _by_rel() -> dict[str, SourceModule]:
    """Modules keyed by their path under src/asymco, the key of LONG_MODULES."""
    return {m.path.relative_to(SRC).as_posix(): m for m in modules().values()}


def test_api_is_small() -> None:
    module = _by_rel()[API_FILE]
    lines = _line_count(module)
    assert lines <= API_MAX_LINES, (
        f"{module.rel}: {lines} lines, at most {API_MAX_LINES}; move logic into the layers it wires"
    )


def test_functions_are_short() -> None:
    long = [
        f"{module.rel}:{node.lineno}: {qualname} spans {node.end_lineno - node.lineno + 1} lines"
        for module in modules().values()
        for qualname, node in functions(module.tree)
        if node.end_lineno - node.lineno + 1 > FUNCTION_MAX_LINES
    ]
    assert not long, f"functions longer than {FUNCTION_MAX_LINES} lines:\n" + "\n".join(long)


def test_modules_are_small() -> None:
    by_rel = _by_rel()
    long = [
        f"{m.rel}: {_line_count(m)} lines"
        for rel, m in by_rel.items()
        if _line_count(m) > MODULE_MAX_LINES and rel not in LONG_MODULES
    ]
    stale = [
        f"LONG_MODULES[{rel!r}]: "
        + ("no such file" if rel not in by_rel else f"{_line_count(by_rel[rel])} lines now")
        for rel in LONG_MODULES
        if rel not in by_rel or _line_count(by_rel[rel]) <= MODULE_MAX_LINES
    ]
    assert not long, (
        f"modules longer than {MODULE_MAX_LINES} lines (split them, or add them to LONG_MODULES "
        "with the reason they are still one purpose):\n" + "\n".join(long)
    )
    assert not stale, "LONG_MODULES entries no longer needed; remove them:\n" + "\n".join(stale)


# ------------------------------------------------------------- 6. one definition per public name

# Public names that may be defined in more than one module: name -> why.
SHARED_NAMES: dict[str, str] = {}


def test_one_definition_per_public_name() -> None:
    defined: dict[str, list[str]] = {}
    for module in modules().values():
        for node in top_level_defs(module.tree):
            if not node.name.startswith("_"):
                defined.setdefault(node.name, []).append(f"{module.rel}:{node.lineno}")
    twice = [
        f"{name}: " + ", ".join(places)
        for name, places in sorted(defined.items())
        if len({p.rsplit(":", 1)[0] for p in places}) > 1 and name not in SHARED_NAMES
    ]
    assert not twice, (
        "public names defined in more than one module (keep one and import it, or list the name "
        "in SHARED_NAMES with the reason):\n" + "\n".join(twice)
    )


# ----------------------------------------------------------------- 7. methods own their settings

METHOD_BASE = "Method"  # the root of every method class, defined in methods/base.py
SETTINGS = "Settings"  # the name of a method's own settings class
# Whether a Settings defined on METHOD_BASE itself satisfies a subclass. False would demand that
# every method (or its family base, such as SmallLossPair) declares its own.
BASE_SETTINGS_COUNT = False  # Method.Settings is the bare base: every method names its own


def _method_classes() -> dict[str, tuple[SourceModule, ast.ClassDef]]:
    """Every class in the methods package, by name (rule 6 keeps the names unique)."""
    return {
        node.name: (module, node)
        for name, module in modules().items()
        if _inside(name, "asymco.methods")
        for node in top_level_defs(module.tree)
        if isinstance(node, ast.ClassDef)
    }


def _bases(node: ast.ClassDef) -> list[str]:
    """The simple names of a class's bases (`base.Method` counts as `Method`)."""
    return [n for n in map(_class_name, node.bases) if n]


def _subclasses_of_method(classes: dict[str, tuple[SourceModule, ast.ClassDef]]) -> set[str]:
    """Classes deriving from METHOD_BASE, directly or through another class of the package."""
    found: set[str] = set()
    while True:
        more = {
            name
            for name, (_, node) in classes.items()
            if name not in found and ({METHOD_BASE} | found) & set(_bases(node))
        }
        if not more:
            return found
        found |= more


def _declares_settings(node: ast.ClassDef) -> bool:
    """A nested `class Settings` or a `Settings = ...` / `Settings: ... = ...` attribute."""
    for stmt in node.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == SETTINGS:
            return True
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and any(
            getattr(t, "id", None) == SETTINGS for t in targets
        ):
            return True
    return False


def _has_settings(name: str, classes: dict[str, tuple[SourceModule, ast.ClassDef]]) -> bool:
    """True when the class or one of its bases within the methods package declares Settings."""
    if name not in classes or (name == METHOD_BASE and not BASE_SETTINGS_COUNT):
        return False
    node = classes[name][1]
    return _declares_settings(node) or any(_has_settings(b, classes) for b in _bases(node))


def _base_mentions_settings() -> bool:
    """The old layout has no Settings at all; rule 7 applies once base.py introduces them."""
    base = modules().get("asymco.methods.base")
    return base is not None and any(
        SETTINGS in (getattr(n, "id", None), getattr(n, "attr", None), getattr(n, "name", None))
        for n in ast.walk(base.tree)
    )


def test_methods_own_their_settings() -> None:
    if not _base_mentions_settings():
        pytest.skip("methods/base.py defines no Settings yet (old layout)")
    classes = _method_classes()
    subclasses = _subclasses_of_method(classes)
    registered = {
        cls
        for name, module in modules().items()
        if _inside(name, "asymco.methods")
        for _, cls in _registrations(module.tree)
        if cls
    }
    leaves = {n for n in subclasses if not any(n in _bases(classes[m][1]) for m in subclasses)}
    checked = sorted((registered & set(classes)) | leaves)
    assert checked, f"no subclass of {METHOD_BASE} found under {METHODS_DIR}"
    missing = [
        f"{classes[n][0].rel}:{classes[n][1].lineno}: class {n} has no {SETTINGS}"
        for n in checked
        if not _has_settings(n, classes)
    ]
    assert not missing, (
        f"methods must declare their settings as a nested class or attribute {SETTINGS} "
        "(or inherit one from a base in the methods package):\n" + "\n".join(missing)
    )
