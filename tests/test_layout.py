"""The package's shape: no import circles, and the model files stand alone (they are copied beside the weights)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bashgpt

PACKAGE = Path(bashgpt.__file__).resolve().parent
MODEL_FILES = {"configuration_bashgpt", "modeling_bashgpt", "fused_loss", "chunked_attention"}
# Underscored names the model files may define or read: Transformers' documented override points and class flags,
# the attention interface's dispatch on config._attn_implementation (as every Transformers model), and our own flag.
MODEL_CONTRACT = {"_init_weights", "_tied_weights_keys", "_no_split_modules", "_skip_keys_device_placement",
                  "_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend",
                  "_can_compile_fullgraph", "_can_record_outputs", "_tp_plan", "_pp_plan", "_attn_implementation",
                  "_is_residual_proj"}


def module_imports() -> dict[str, set[str]]:
    """bashgpt module name -> the bashgpt modules it imports anywhere in its body (lazy imports included)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["bashgpt", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + (node.module.split(".") if node.module else []))
                for alias in node.names:
                    if f"{target}.{alias.name}" in files:
                        deps.add(f"{target}.{alias.name}")
                    elif target in files:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        # The package __init__ only re-exports the model; importing names from it is not a circle.
        for dep in sorted(graph[node] - {"bashgpt"}):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    graph = module_imports()
    assert {"bashgpt.data.corpus", "bashgpt.training.train", "bashgpt.inference.generate"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The layers, bottom up: a module imports only from its own layer and those below; training and inference stand
# side by side (neither imports the other). What is not named here belongs to the layer of its subpackage.
LAYERS = {
    "model": {f"bashgpt.{m}" for m in MODEL_FILES} | {"bashgpt"},
    "base": {f"bashgpt.{m}" for m in ("errors", "devices", "logs", "network", "model_folder", "sampling", "shellcheck")},
    "data": {"bashgpt.data"},
    "training": {"bashgpt.training"},
    "inference": {"bashgpt.inference"},
    "top": {"bashgpt.quickstart", "bashgpt.cli"},
}
BELOW = {"model": set(), "base": {"model"}, "data": {"model", "base"}, "training": {"model", "base", "data"},
         "inference": {"model", "base", "data"}, "top": {"model", "base", "data", "training", "inference"}}


def layer_of(module: str) -> str:
    for layer, members in LAYERS.items():
        if module in members or any(module.startswith(m + ".") for m in members if m != "bashgpt"):
            return layer
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                  if layer_of(b) != layer_of(a) and layer_of(b) not in BELOW[layer_of(a)])


def test_the_layer_check_finds_a_planted_upward_import():
    planted = {"bashgpt.data.corpus": {"bashgpt.inference.tasks"}, "bashgpt.training.train": {"bashgpt.inference.x"},
               "bashgpt.inference.generate": {"bashgpt.data.tasks", "bashgpt.sampling"}}
    assert upward_imports(planted) == ["bashgpt.data.corpus -> bashgpt.inference.tasks",
                                       "bashgpt.training.train -> bashgpt.inference.x"]


def test_imports_only_go_down():
    """Model files, then the base modules (errors, devices, the model-folder module...), then data, then training and
    inference side by side, then the quickstart and the CLI."""
    assert upward_imports(module_imports()) == []


def test_model_files_import_only_each_other():
    """Remote code loads these files from a model folder, where the rest of bashgpt is absent."""
    graph = module_imports()
    for name in MODEL_FILES:
        assert graph[f"bashgpt.{name}"] <= {f"bashgpt.{m}" for m in MODEL_FILES}, name


def private_names(source: str) -> set[str]:
    """Underscored attributes read or set, and underscored methods defined in classes (overrides), in ``source``."""
    tree = ast.parse(source)
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        names |= {item.name for item in cls.body if isinstance(item, ast.FunctionDef)}
        names |= {t.id for item in cls.body if isinstance(item, ast.Assign) for t in item.targets
                  if isinstance(t, ast.Name)}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_private_name_finder_finds_overrides_and_reads():
    source = "class M(X):\n    _flag = 1\n    def _sample(self):\n        return self.config._pad_token_tensor\n"
    assert private_names(source) == {"_flag", "_sample", "_pad_token_tensor"}


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_model_files_use_only_public_apis(name):
    """The files copied beside the weights override and read nothing private of Transformers or torch (they run
    under whatever release a user has), and call no torch.ops."""
    source = (PACKAGE / f"{name}.py").read_text()
    assert private_names(source) <= MODEL_CONTRACT, private_names(source) - MODEL_CONTRACT
    assert "torch.ops" not in source


def test_every_subpackage_is_packaged():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    declared = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk == declared


def test_ruff_finds_nothing_and_no_function_is_too_complex():
    """pyproject.toml's lint rules, McCabe complexity 15 among them, over the package, the tests, bench and recipes."""
    root = PACKAGE.parent
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "bashgpt", "tests", "bench", "recipes"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]

