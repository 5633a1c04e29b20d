"""The AST pass: resolve dotted names through the file's imports and aliases, then check Python constructs."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kbench.scan.findings import STATIC_MONKEY_PATCH, STATIC_PRECISION, STATIC_TORCH_FALLBACK, Findings
from kbench.scan.rules import (
    COMPUTE_PREFIXES,
    DICT_MUTATORS,
    DYNAMIC_IMPORTS,
    ESCAPE_ATTRS,
    LOW_DTYPE_PREFIXES,
    LOW_DTYPES,
    MUTATING_DUNDERS,
    NAME_RULES,
    NON_COMPUTE_PREFIXES,
    REBINDING_ATTRS,
    SETATTR_CALLS,
    SETTING_PREFIXES,
    TF32_SWITCHES,
)

# --- names ----------------------------------------------------------------------------------------------


def _dotted_parts(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; `getattr(a.b, "c")` too, since that is the same reference spelled to hide."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _dotted_parts(node.value)
        return None if base is None else [*base, node.attr]
    if isinstance(node, ast.Call):
        name = _getattr_constant(node)
        base = _dotted_parts(node.args[0]) if name is not None else None
        return None if base is None or name is None else [*base, name]
    return None


def _getattr_constant(call: ast.Call) -> str | None:
    """The attribute name of `getattr(x, "c")`, else None."""
    if isinstance(call.func, ast.Name) and call.func.id == "getattr" and len(call.args) >= 2:
        return _constant_str(call.args[1])
    return None


def _constant_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@dataclass
class _Names:
    """What the file's names stand for: `F` -> `torch.nn.functional`, `Stream` -> `torch.cuda.Stream`."""

    aliases: dict[str, str] = field(default_factory=dict)
    star_modules: list[str] = field(default_factory=list)

    def candidates(self, node: ast.AST) -> list[str]:
        """The full names a dotted expression may stand for (several only after `from m import *`)."""
        parts = _dotted_parts(node)
        if parts is None:
            return []
        root, rest = parts[0], parts[1:]
        if root in self.aliases:
            return [".".join([self.aliases[root], *rest])]
        return [".".join(parts), *(".".join([module, *parts]) for module in self.star_modules)]

    def first(self, node: ast.AST) -> str | None:
        found = self.candidates(node)
        return found[0] if found else None

    def external_root(self, node: ast.AST) -> str | None:
        """The import an attribute/item chain hangs off (`torch` for `torch.Tensor.__eq__`), else None.

        None means the chain starts at `self` or a local object, which a solution may change freely.
        """
        while isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id) or ("__builtins__" if node.id == "__builtins__" else None)
        if not isinstance(node, ast.Call):
            return None
        func = self.first(node.func)
        if func == "type":
            return "type(...)"  # patching the class of anything patches every instance, torch's included
        if func in {"getattr", "vars"} and node.args:
            return self.external_root(node.args[0])
        if func in DYNAMIC_IMPORTS and node.args:
            return _constant_str(node.args[0])
        return None


def _import_bindings(node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str]]:
    """(bound name, full name) for each name an import statement binds; '*' for star imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                yield alias.asname, alias.name
            else:
                root = alias.name.split(".")[0]
                yield root, root
        return
    module = "." * node.level + (node.module or "")
    for alias in node.names:
        yield (alias.asname or alias.name), (module if alias.name == "*" else f"{module}.{alias.name}")


def _imported_full_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """What an import statement refers to, for the name rules (`import a.b` refers to `a.b`, not just `a`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [full for _, full in _import_bindings(node)]


def _dynamic_import_name(node: ast.AST, names: _Names) -> str | None:
    if isinstance(node, ast.Call) and names.first(node.func) in DYNAMIC_IMPORTS and node.args:
        return _constant_str(node.args[0])
    return None


def _collect_names(tree: ast.Module) -> _Names:
    names = _Names()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for bound, full in _import_bindings(node):
                if bound == "*":
                    names.star_modules.append(full)
                else:
                    names.aliases[bound] = full
    # Local aliases of imported things (`T = torch.Tensor`, `th = __import__("threading")`); twice, for chains.
    for _ in range(2):
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                _maybe_alias(names, node.targets[0].id, node.value)
    return names


def _maybe_alias(names: _Names, bound: str, value: ast.expr) -> None:
    dynamic = _dynamic_import_name(value, names)
    if dynamic is not None:
        names.aliases[bound] = dynamic
        return
    parts = _dotted_parts(value)
    if parts is not None and parts[0] in names.aliases and bound != parts[0]:
        resolved = names.first(value)
        if resolved is not None:
            names.aliases[bound] = resolved


# --- checks ---------------------------------------------------------------------------------------------


def scan_tree(findings: Findings, tree: ast.Module) -> None:
    names = _collect_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            _check_names(findings, node.lineno, _imported_full_names(node))
        elif isinstance(node, ast.Name | ast.Attribute | ast.Call):
            _check_names(findings, node.lineno, names.candidates(node))
        if isinstance(node, ast.Attribute) and node.attr in ESCAPE_ATTRS:
            findings.add(STATIC_MONKEY_PATCH, node.lineno, "Reaches into another scope's namespace or frame.")
        if isinstance(node, ast.Call):
            _check_call(findings, node, names)
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            _check_assignment(findings, node, names)
        if isinstance(node, ast.Try | ast.TryStar):
            _check_try(findings, node, names)
        if isinstance(node, ast.Assign | ast.ClassDef):
            _check_reused_reference(findings, node, names)


def _check_names(findings: Findings, line: int, full_names: Iterable[str]) -> None:
    for name in full_names:
        for rule in NAME_RULES:
            if rule.matches(name):
                findings.add(rule.flag, line, rule.why)


def _check_call(findings: Findings, call: ast.Call, names: _Names) -> None:
    func = names.first(call.func)
    dynamic = _dynamic_import_name(call, names)
    if dynamic is not None:
        _check_names(findings, call.lineno, [dynamic])
    elif func in DYNAMIC_IMPORTS:
        findings.add(STATIC_MONKEY_PATCH, call.lineno, "Imports a module whose name is computed at runtime.")
    if func in SETATTR_CALLS and call.args and names.external_root(call.args[0]):
        findings.add(STATIC_MONKEY_PATCH, call.lineno, "Sets an attribute on an imported module or torch object.")
    if _mutates_external(call, names):
        findings.add(STATIC_MONKEY_PATCH, call.lineno, "Changes an imported module or torch object in place.")
    if func is not None and func.startswith("torch.library.") and _targets_aten(call):
        findings.add(STATIC_MONKEY_PATCH, call.lineno, "Overrides a built-in PyTorch operator for the whole process.")
    _check_precision_call(findings, call, func, names)


def _mutates_external(call: ast.Call, names: _Names) -> bool:
    """`torch.__setattr__(...)`, `torch.__dict__.update(...)` and the like."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr in MUTATING_DUNDERS:
        return names.external_root(func.value) is not None
    owner = func.value
    return (
        func.attr in DICT_MUTATORS
        and isinstance(owner, ast.Attribute)
        and owner.attr == "__dict__"
        and names.external_root(owner) is not None
    )


def _targets_aten(call: ast.Call) -> bool:
    strings = [_constant_str(arg) for arg in call.args]
    return any(s is not None and (s == "aten" or s.startswith("aten::")) for s in strings)


def _is_low_dtype(name: str) -> bool:
    return name in LOW_DTYPES or name.startswith(LOW_DTYPE_PREFIXES)


def _check_precision_call(findings: Findings, call: ast.Call, func: str | None, names: _Names) -> None:
    if isinstance(call.func, ast.Attribute) and call.func.attr in {"half", "bfloat16"} and not call.args:
        findings.add(STATIC_PRECISION, call.lineno, "Converts to a 16-bit floating-point type.")
    if func == "torch.set_float32_matmul_precision":
        arg = call.args[0] if call.args else None
        if _constant_str(arg) != "highest":
            findings.add(STATIC_PRECISION, call.lineno, "Lets fp32 matmuls run in TF32 or bf16.")
    values = [*call.args, *(keyword.value for keyword in call.keywords)]
    if any(_is_low_dtype(name) for value in values for name in names.candidates(value)):
        findings.add(STATIC_PRECISION, call.lineno, "Asks for a 16-bit (or narrower) floating-point dtype.")


def _assignment_targets(node: ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete) -> list[ast.expr]:
    raw = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
    flat: list[ast.expr] = []
    pending = list(raw)
    while pending:
        target = pending.pop()
        if isinstance(target, ast.Tuple | ast.List):
            pending.extend(target.elts)
        elif isinstance(target, ast.Starred):
            pending.append(target.value)
        else:
            flat.append(target)
    return flat


def _check_assignment(
    findings: Findings, node: ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete, names: _Names
) -> None:
    value = None if isinstance(node, ast.Delete) else node.value
    for target in _assignment_targets(node):
        if isinstance(target, ast.Attribute) and target.attr in REBINDING_ATTRS:
            findings.add(STATIC_MONKEY_PATCH, node.lineno, f"Rebinds {target.attr}, changing what an object is.")
        elif _patches_external(target, value, names):
            findings.add(STATIC_MONKEY_PATCH, node.lineno, "Replaces part of an imported module or torch object.")
        if isinstance(node, ast.Assign):
            _check_precision_switch(findings, node, target, names)


def _patches_external(target: ast.expr, value: ast.expr | None, names: _Names) -> bool:
    if not isinstance(target, ast.Attribute | ast.Subscript):
        return False  # rebinding a plain name only changes this file's namespace
    root = names.external_root(target)
    if root is None:
        return False
    full = names.first(target.value if isinstance(target, ast.Subscript) else target) or ""
    if full == "os.environ":
        return False  # setting TORCH_CUDA_ARCH_LIST and the like before a build is ordinary
    # `torch.backends.cudnn.benchmark = True` is a setting; only a non-constant value there is suspicious.
    return not (full.startswith(SETTING_PREFIXES) and isinstance(value, ast.Constant))


def _check_precision_switch(findings: Findings, node: ast.Assign, target: ast.expr, names: _Names) -> None:
    value = node.value
    if names.first(target) in TF32_SWITCHES and not (isinstance(value, ast.Constant) and value.value is False):
        findings.add(STATIC_PRECISION, node.lineno, "Lets fp32 math run in TF32 or reduced-precision reductions.")
    if isinstance(target, ast.Attribute) and target.attr == "fp32_precision" and _constant_str(value) != "ieee":
        findings.add(STATIC_PRECISION, node.lineno, "Lets fp32 math run in TF32.")


def _walk_skipping_raise(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node under `nodes`, except inside `raise` statements (a re-raise is not a fallback)."""
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Raise):
            continue
        yield node
        pending.extend(ast.iter_child_nodes(node))


def _is_super_forward(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "forward"
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "super"
    )


def _is_torch_compute(call: ast.Call, names: _Names) -> bool:
    if _is_super_forward(call):
        return True
    raw = _dotted_parts(call.func)
    spellings = [*names.candidates(call.func), ".".join(raw)] if raw else []
    for name in spellings:
        if "Model" in name.split("."):
            return True  # the reference model, or its forward
        if name.startswith(COMPUTE_PREFIXES) and not name.startswith(NON_COMPUTE_PREFIXES):
            return True
    return False


def _check_try(findings: Findings, node: ast.Try | ast.TryStar, names: _Names) -> None:
    for handler in node.handlers:
        for inner in _walk_skipping_raise(handler.body):
            if isinstance(inner, ast.Call) and _is_torch_compute(inner, names):
                findings.add(
                    STATIC_TORCH_FALLBACK,
                    inner.lineno,
                    "Falls back to PyTorch when the custom kernel fails, which hides a broken kernel.",
                )


def _names_the_reference(node: ast.AST, names: _Names) -> bool:
    return any(name.split(".")[-1] == "Model" for name in names.candidates(node))


def _check_reused_reference(findings: Findings, node: ast.Assign | ast.ClassDef, names: _Names) -> None:
    why = "Reuses the reference Model as ModelNew."
    if isinstance(node, ast.ClassDef):
        if node.name == "ModelNew" and any(_names_the_reference(base, names) for base in node.bases):
            findings.add(STATIC_TORCH_FALLBACK, node.lineno, why)
        return
    named_modelnew = any(isinstance(t, ast.Name) and t.id == "ModelNew" for t in node.targets)
    if named_modelnew and _names_the_reference(node.value, names):
        findings.add(STATIC_TORCH_FALLBACK, node.lineno, why)
