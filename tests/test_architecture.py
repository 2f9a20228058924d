"""The shape of the code: no import cycles and no arrow from a lower layer to a higher one (docs/architecture.md).

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rag

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rag", "ingest", "ui")

#: Lowest first. A module may import its own component and the components of lower layers, never a component of
#: its own layer or of a higher one. A component is a package or a module, named by its dotted prefix.
LAYERS: list[set[str]] = [
    {"rag.errors", "rag.chunks"},  # what everything shares
    {"rag.settings", "rag.models", "rag.registry"},  # configuration; model name -> files; backends by name
    {"rag.llm", "rag.retrieval"},  # the model; retrieval (siblings: neither knows the other)
    {"rag.answer", "ingest", "rag.eval"},  # answering a question; filling the store; measuring
    {"rag.app"},  # the composition root and the services the edges call
    {"ui", "rag.server"},  # the browser UI and the HTTP API (edges: they only wire rag.app)
    {"rag.cli"},  # the command line (`rag ui` starts the UI)
    {"rag.__main__"},  # python -m rag
]


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (anywhere in the file), relative imports resolved."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: imports(name, path, known) for name, path in known.items()}
    # a package's __init__ re-exporting its own submodules is not a dependency of theirs on it
    for name, path in known.items():
        if path.name == "__init__.py":
            edges[name] = {target for target in edges[name] if not target.startswith(name + ".")}
    return edges


def component(module: str) -> tuple[int, str] | None:
    """(layer, component) of a module; None for the top-level ``rag`` package (the public facade)."""
    for level, names in enumerate(LAYERS):
        for prefix in names:
            if module == prefix or module.startswith(prefix + "."):
                return level, prefix
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_every_module_belongs_to_a_layer() -> None:
    assert [name for name in graph() if name != "rag" and component(name) is None] == []


def test_no_layer_imports_its_own_level_or_a_higher_one() -> None:
    wrong = []
    for source, targets in graph().items():
        here = component(source)
        for target in targets:
            there = component(target)
            if here is None or there is None or here[1] == there[1]:
                continue
            if there[0] >= here[0]:
                wrong.append(f"{source} -> {target}")
    assert sorted(wrong) == []


#: The edges wire the application (rag.app) to their protocol; the library below it is rag.app's to compose. The
#: command line's `rag eval` is the measuring harness's own command, and reads the datasets' code.
EDGES = ("ui", "rag.server", "rag.cli")
EDGE_MAY_IMPORT = ("rag.app", "rag.errors", "rag.settings", "ui", "rag.server", "rag.cli")
HARNESS = {"rag.cli.eval": ("rag.eval", "rag.answer")}


def test_the_edges_only_wire_the_application() -> None:
    wrong = []
    for source, targets in graph().items():
        if not source.startswith(EDGES):
            continue
        allowed = EDGE_MAY_IMPORT + HARNESS.get(source, ())
        wrong += [f"{source} -> {target}" for target in targets if not target.startswith(allowed)]
    assert sorted(wrong) == []


#: What the composition root builds (rag/app/root.py: the collaborators; rag/app/application.py: the services over
#: them). The edges ask it for these, never build one themselves; the command line alone turns flags into
#: ``Components`` (flags -> Settings -> Components), as the harness `rag eval` does.
BUILT_BY_THE_ROOT = {
    "Application", "Assistant", "DocumentLibrary", "PageViews", "AccessPolicy", "Admission", "ChunkStore",
    "LexicalIndex", "HybridRetriever", "RagChain", "MixtralInstructLLM", "ChatMixtralInstruct", "IngestPipeline",
    "FolderWatcher", "ModelTokens", "PromptSpeed", "Components",
}  # fmt: skip
MAY_BUILD = {"rag.cli": {"Components"}}


def constructed(path: Path) -> list[tuple[int, str]]:
    """(line, class) of each call in ``path`` of a class imported from the project by that name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("rag", "ingest")
        for alias in node.names
    }
    return [
        (node.lineno, node.func.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported
    ]


def test_the_edges_build_nothing_the_root_builds() -> None:
    """Application.build / .over (or Components on the command line) and the root's accessors: nothing else."""
    wrong = []
    for name, path in modules().items():
        if not name.startswith(EDGES):
            continue
        allowed = next((names for prefix, names in MAY_BUILD.items() if name.startswith(prefix)), set())
        wrong += [f"{name}:{line} {cls}()" for line, cls in constructed(path) if cls in BUILT_BY_THE_ROOT - allowed]
    assert sorted(wrong) == []
    # and the check sees a construction where there is one
    assert "Components" in {cls for _, cls in constructed(ROOT / "rag/app/application.py")}


def test_the_checks_catch_what_they_are_for() -> None:
    """The graph walker sees imports inside functions, and the checks report a cycle and an upward arrow."""
    edges = graph()
    assert "rag.app.root" in edges["rag.cli.ingest"]  # imported inside the command's function
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    here, there = component("rag.retrieval.store"), component("rag.app.root")
    assert here is not None and there is not None and there[0] > here[0]


def test_the_public_api() -> None:
    assert rag.__all__ == [
        "AnswerEvent",
        "AnswerStats",
        "Application",
        "AskOptions",
        "Assistant",
        "BusyError",
        "ChatMessage",
        "ChatMixtralInstruct",
        "ChunkStore",
        "Components",
        "ConfigError",
        "ContextOverflowError",
        "DocumentLibrary",
        "EmptyStoreError",
        "HybridRetriever",
        "MixtralInstructLLM",
        "MixtralTokenizer",
        "ModelMismatchError",
        "ModelNotFoundError",
        "RagAnswer",
        "RagChain",
        "RagError",
        "RagOptions",
        "RagQuestion",
        "RagSource",
        "SentenceTransformerEmbeddings",
        "Settings",
        "StoreError",
        "build_chain",
        "build_ingest_pipeline",
        "build_rag",
        "build_retriever",
        "render_instruct_prompt",
    ]
    for name in rag.__all__:
        assert getattr(rag, name) is not None, name  # every exported name resolves
