"""The layer rules of DESIGN.md, checked on the source: imports point downwards only."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> list[tuple[str, str]]:
    out = []
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(str(path.relative_to(REPO)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.append((str(path.relative_to(REPO)), node.module))
    return out


def test_indexer_imports_neither_core_nor_qt():
    bad = [(f, m) for f, m in _imports("indexer")
           if m.startswith(("PySide6", "clipdesk")) and not m.startswith("clipdesk.indexer")]
    assert bad == []


def test_core_does_not_import_qt():
    assert [(f, m) for f, m in _imports("clipdesk") if m.startswith("PySide6")] == []


def test_rules_are_checked_on_real_files():
    # The walkers above must actually see imports, or the two tests would pass vacuously.
    assert any(m == "numpy" for _, m in _imports("indexer"))
    assert any(m.startswith("clipdesk.indexer") for _, m in _imports("clipdesk"))


BACKENDS = ("torch", "torchvision", "open_clip", "onnxruntime", "openvino", "nncf", "onnx", "onnxscript")


def test_model_backends_are_imported_only_in_the_runtime_package():
    # The default install has no torch: a backend imported elsewhere would break it. The one
    # exception is the CUDA decoder (nvJPEG through torchvision), used only beside a CUDA model.
    seen = [(f, m) for folder in ("clipdesk", "indexer", "ui") for f, m in _imports(folder)
            if m.split(".")[0] in BACKENDS]
    outside = [(f, m) for f, m in seen if not f.startswith("clipdesk/runtime/") and f != "indexer/gpu_decode.py"]
    assert outside == []
    assert any(f.startswith("clipdesk/runtime/") and m == "onnxruntime" for f, m in seen)  # the walker sees them


def _module_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (at any depth in the file, relative imports resolved)."""
    roots = {"clipdesk": "clipdesk", "indexer": "clipdesk.indexer", "ui": "clipdesk.ui"}
    graph: dict[str, set[str]] = {}
    for folder, package in roots.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
            deps = graph.setdefault(name, set())
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                        base = ".".join(up + ([node.module] if node.module else []))
                    deps.add(base)
                    deps.update(f"{base}.{a.name}" for a in node.names)
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_circles_between_modules():
    graph = _module_graph()
    assert "clipdesk.cli_care" in graph["clipdesk.cli"] and "clipdesk.indexer.formats" in graph["clipdesk.indexer.decode"]
    circles = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph[b]
                     and not (a.startswith(b + ".") or b.startswith(a + ".")))  # a package and its modules
    assert circles == []
