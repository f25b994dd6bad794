"""The largest functions of the service and the agent: lines and branches (issue #30's measure).

Branches: each if/elif, loop, except handler, conditional expression, comprehension condition,
match case and extra operand of `and`/`or` (McCabe's decision points). Nested functions count
as their own. Run: python bench/function_sizes.py [root ...] (default: api agent/src).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

DECISIONS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp, ast.match_case)


def branches(function: ast.AST) -> int:
    count = 0
    for node in walk_own(function):
        if isinstance(node, DECISIONS):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += len(node.ifs)
    return count


def walk_own(function: ast.AST):
    """The function's nodes, without those of the functions and classes defined inside it."""
    todo = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def functions(root: Path):
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.parts or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node, node.end_lineno - node.lineno + 1, branches(node)


def main(roots: list[str]) -> None:
    found = [item for root in roots for item in functions(Path(root))]
    for title, key in (("longest", lambda item: item[2]), ("most branches", lambda item: item[3])):
        print(f"{title}:")
        for path, node, lines, count in sorted(found, key=key, reverse=True)[:8]:
            print(f"  {lines:4d} lines {count:3d} branches  {path}:{node.lineno} {node.name}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["api", "agent/src"])
