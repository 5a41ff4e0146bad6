"""Guards over the source (``src/`` and ``pipelines/``), read with ``ast``, so a new raw write or
an unsafe load fails CI instead of waiting for a review to spot it.

1. Every file the pipeline writes goes through :mod:`pspnet.atomic_files` (temp file + rename). A
   writing call (``savefig``, ``to_csv``, ``np.save*``, ``torch.save``, ``.save(...)``,
   ``write_text`` / ``write_bytes``, ``json.dump``, ``open(..., "w")``, ``shutil.copy*``,
   ``os.replace`` ...) is accepted only inside a ``with atomic_files.atomic_path(...)`` /
   ``atomic_files.atomic_dir(...)`` block (it writes the temp file), inside a
   ``tempfile.TemporaryDirectory()`` block (scratch files, never a pipeline output), in
   ``pspnet/atomic_files.py`` itself, or when :data:`WRITE_ALLOWED` names it with the reason.
2. Untrusted files: no ``torch.load`` without ``weights_only=True``; no pickle / cloudpickle /
   dill / joblib loads, no ``yaml.load`` without a safe loader, no ``np.load(allow_pickle=True)``,
   no ``torch.jit.load``; the loaders that may run code stored with a model
   (``torch.export.load``, ``mlflow.pytorch.load_model``, ``mlflow.pyfunc.load_model``) only
   where :data:`LOAD_ALLOWED` says why that is safe.
3. No shell: no ``shell=True``, ``os.system``, ``os.popen``, ``subprocess.getoutput``; a
   subprocess command is an argument list, never a string (which a later change could turn into
   a shell string built from config).

Entries are keyed by (file, enclosing function, start of the call's source), not by line, so
edits elsewhere in a file do not break them; an entry that no longer matches anything fails too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCANNED = (REPO_ROOT / "src" / "pspnet", REPO_ROOT / "pipelines")
IO_MODULE = Path("src/pspnet/atomic_files.py")

#: Context managers whose body may write raw: the temp path of an atomic write, or scratch space.
SAFE_CONTEXTS = ("atomic_path", "atomic_dir", "TemporaryDirectory")
#: Methods / functions that write a file whatever they are called on.
WRITE_ATTRS = frozenset({
    "savefig", "to_csv", "to_parquet", "to_json", "to_excel", "to_pickle", "to_feather", "to_hdf",
    "write_text", "write_bytes", "savetxt", "savez", "savez_compressed", "save", "imwrite",
})
#: Fully dotted calls that write (or move files into place).
WRITE_CALLS = frozenset({
    "shutil.copy", "shutil.copy2", "shutil.copyfile", "shutil.copytree", "shutil.move",
    "os.replace", "os.rename", "os.link", "os.symlink",
})
#: ``x.dump(obj, stream)`` writes (json / pickle / yaml); ``yaml.safe_dump(obj)`` returns a string.
DUMP_ATTRS = frozenset({"dump", "safe_dump"})
#: ``atomic_files.write_text`` / ``atomic_files.write_json`` / ``atomic_files.write_bytes``: the atomic helpers themselves.
ATOMIC_HELPERS_PREFIX = "atomic_files."
#: open() modes that write.
WRITE_MODE_CHARS = frozenset("wax+")

# (file, enclosing function, start of the call's source) -> why it is fine.
WRITE_ALLOWED: dict[tuple[str, str, str], str] = {
    ("src/pspnet/stages/evaluate.py", "run", "scored.images.save("):
        "ImageScores.save writes through atomic_files.atomic_path",
    ("src/pspnet/stages/train.py", "_train", "ref.save("):
        "RunRef.save writes through atomic_files.write_json",
    ("src/pspnet/train/trainer.py", "Trainer.save_state", "self.store.save("):
        "StateStore.save (train/resume.py) writes through atomic_files.atomic_path",
    ("src/pspnet/data/convert.py", "png_bytes", "Image.fromarray(array).save(buffer"):
        "encodes into an in-memory buffer; the bytes are written with atomic_files.write_bytes",
    ("src/pspnet/registry/packaging.py", "export_network", "torch.export.save("):
        "writes into the TemporaryDirectory of log_segmentation_model, uploaded to MLflow, never a pipeline output",
}

#: Loaders that may run code stored in the file.
CODE_LOADERS = frozenset({"torch.export.load", "mlflow.pytorch.load_model", "mlflow.pyfunc.load_model"})
LOAD_ALLOWED: dict[tuple[str, str, str], str] = {
    ("src/pspnet/registry/segmenter.py", "load_program", "torch.export.load("):
        "after MLflow's check that no record of the archive is unpickled (or the user's explicit opt-in)",
    ("src/pspnet/registry/segmenter.py", "_program_and_classes", "mlflow.pytorch.load_model("):
        "only with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true, the user's explicit opt-in for a trusted store",
    ("src/pspnet/registry/serving_model.py", "SegmentationPyfunc._load_network", "torch.export.load("):
        "the served model's own code: it runs only where a user chose to load / serve that model",
    ("src/pspnet/registry/logged_model.py", "probe_logged_model", "mlflow.pyfunc.load_model("):
        "loads back the version this very run has just logged, to check it serves",
}
#: Calls that deserialise arbitrary Python objects.
PICKLE_LOADS = frozenset({
    "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads",
    "joblib.load", "torch.jit.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
})
SAFE_YAML_LOADERS = ("SafeLoader", "CSafeLoader")
#: Calls that run a shell string.
SHELL_CALLS = frozenset({"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"})
SUBPROCESS_CALLS = frozenset({
    "subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
})


@dataclass(frozen=True)
class Call:
    file: str
    function: str
    line: int
    source: str
    name: str
    node: ast.Call
    in_safe_context: bool

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line} in {self.function}: {self.source[:100]}"

    def key_matches(self, key: tuple[str, str, str]) -> bool:
        return key[0] == self.file and key[1] == self.function and self.source.startswith(key[2])


def dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name / attribute chain; calls inside keep their dotted callee + ``()``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{dotted(node.func)}()"
    return "?"


class _Collector(ast.NodeVisitor):
    def __init__(self, file: str, text: str) -> None:
        self.file, self.text = file, text
        self.functions: list[str] = []
        self.safe_depth = 0
        self.calls: list[Call] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _function

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        safe = any(
            isinstance(item.context_expr, ast.Call) and dotted(item.context_expr.func).split(".")[-1] in SAFE_CONTEXTS
            for item in node.items
        )
        self.safe_depth += safe
        self.generic_visit(node)
        self.safe_depth -= safe

    visit_With = visit_AsyncWith = _with

    def visit_Call(self, node: ast.Call) -> None:
        self.calls.append(Call(
            file=self.file,
            function=".".join(self.functions) or "<module>",
            line=node.lineno,
            source=ast.get_source_segment(self.text, node) or "",
            name=dotted(node.func),
            node=node,
            in_safe_context=self.safe_depth > 0,
        ))
        self.generic_visit(node)


def all_calls() -> list[Call]:
    calls: list[Call] = []
    for top in SCANNED:
        for path in sorted(top.rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            collector = _Collector(str(path.relative_to(REPO_ROOT)), text)
            collector.visit(ast.parse(text, filename=str(path)))
            calls += collector.calls
    return calls


CALLS = all_calls()


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _open_mode(call: Call) -> str | None:
    """The mode of ``open(path, mode)`` / ``path.open(mode)`` when it is a string constant."""
    node = call.node
    index = 1 if call.name == "open" else 0
    mode = _keyword(node, "mode") or (node.args[index] if len(node.args) > index else None)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else None


def is_write(call: Call) -> bool:
    attr = call.name.split(".")[-1]
    if call.name.startswith(ATOMIC_HELPERS_PREFIX):
        return False
    if attr.startswith("to_") and attr in WRITE_ATTRS:  # pandas: without a path it returns the text
        return bool(call.node.args) or any(_keyword(call.node, k) is not None for k in ("path", "path_or_buf", "excel_writer"))
    if call.name in WRITE_CALLS or (attr in WRITE_ATTRS and "." in call.name):
        return True
    if attr in DUMP_ATTRS and "." in call.name:
        return len(call.node.args) >= 2 or _keyword(call.node, "stream") is not None or _keyword(call.node, "fp") is not None
    if call.name == "open" or (attr == "open" and "." in call.name and not call.name.startswith("Image.")):
        return bool(WRITE_MODE_CHARS & set(_open_mode(call) or ""))
    return False


def _allowed(call: Call, table: dict[tuple[str, str, str], str]) -> bool:
    return any(call.key_matches(key) for key in table)


def raw_writes(calls: list[Call] = CALLS) -> Iterator[Call]:
    for call in calls:
        if call.file == str(IO_MODULE) or call.in_safe_context or not is_write(call):
            continue
        if not _allowed(call, WRITE_ALLOWED):
            yield call


def test_every_write_goes_through_atomic_files() -> None:
    offenders = [c.where for c in raw_writes()]
    assert not offenders, (
        "raw file writes outside pspnet.atomic_files (write through atomic_files.write_text / write_json / write_bytes, or inside "
        "`with atomic_files.atomic_path(target) as tmp:` / `atomic_files.atomic_dir(...)`; if it truly is not a pipeline output, add it "
        "to WRITE_ALLOWED with the reason):\n" + "\n".join(offenders)
    )


def unsafe_loads(calls: list[Call] = CALLS) -> Iterator[str]:
    for call in calls:
        node, name = call.node, call.name
        if name == "torch.load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                yield f"{call.where}: torch.load without weights_only=True"
        elif name in PICKLE_LOADS:
            yield f"{call.where}: {name} deserialises arbitrary objects"
        elif name == "yaml.load":
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                yield f"{call.where}: yaml.load without SafeLoader (use yaml.safe_load)"
        elif name in ("np.load", "numpy.load"):
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                yield f"{call.where}: np.load with allow_pickle"
        elif name in CODE_LOADERS and not _allowed(call, LOAD_ALLOWED):
            yield f"{call.where}: {name} may run code stored with the model; load through pspnet.registry.segmenter"


def test_no_loader_runs_code_from_a_file() -> None:
    offenders = list(unsafe_loads())
    assert not offenders, "unsafe deserialisation (see this file's docstring):\n" + "\n".join(offenders)


def _is_string_command(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _is_string_command(node.left) or _is_string_command(node.right)
    return isinstance(node, ast.Call) and dotted(node.func).endswith(".format")


def shell_uses(calls: list[Call] = CALLS) -> Iterator[str]:
    for call in calls:
        if call.name in SHELL_CALLS:
            yield f"{call.where}: {call.name} runs a shell string"
        shell = _keyword(call.node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            yield f"{call.where}: shell={ast.unparse(shell)}"
        if call.name in SUBPROCESS_CALLS:
            command = call.node.args[0] if call.node.args else _keyword(call.node, "args")
            if command is not None and _is_string_command(command):
                yield f"{call.where}: the command is a string; pass an argument list"


def test_no_shell_and_no_string_commands() -> None:
    offenders = list(shell_uses())
    assert not offenders, "shell use (see this file's docstring):\n" + "\n".join(offenders)


@pytest.mark.parametrize("table", ["WRITE_ALLOWED", "LOAD_ALLOWED"])
def test_every_allow_list_entry_still_matches_a_call(table: str) -> None:
    entries = globals()[table]
    stale = [key for key in entries if not any(c.key_matches(key) for c in CALLS)]
    assert not stale, f"{table} entries that match no call any more (remove them): {stale}"


# The guards themselves: each must catch what it is for.
_BAD_SOURCE = '''
import json, os, pickle, shutil, subprocess, torch, yaml
import numpy as np
from pspnet import atomic_files

def bad(fig, frame, path, cfg):
    fig.savefig(path)
    frame.to_csv(path)
    np.savez(path, a=1)
    torch.save({}, path)
    path.write_text("x")
    json.dump({}, open(path, "w"))
    shutil.copy2(path, path)
    torch.load(path)
    pickle.loads(b"")
    yaml.load(path.read_text())
    subprocess.run(f"dvc repro {cfg}", shell=True)
    subprocess.run("dvc repro")
    os.system("ls")

def good(fig, path):
    with atomic_files.atomic_path(path) as tmp:
        fig.savefig(tmp)
    torch.load(path, weights_only=True)
    yaml.safe_load(path.read_text())
    json.dumps({})
    subprocess.run(["dvc", "repro"], check=False)
'''


def test_the_guards_catch_what_they_are_for() -> None:
    collector = _Collector("src/pspnet/example.py", _BAD_SOURCE)
    collector.visit(ast.parse(_BAD_SOURCE))
    calls = collector.calls
    writes = {c.source.split("(")[0] for c in raw_writes(calls)}
    assert writes == {"fig.savefig", "frame.to_csv", "np.savez", "torch.save", "path.write_text", "json.dump",
                      "open", "shutil.copy2"}
    loads = list(unsafe_loads(calls))
    assert len(loads) == 3 and "torch.load without weights_only" in loads[0]
    shells = list(shell_uses(calls))
    assert len(shells) == 4 and any("shell=True" in s for s in shells)
    assert sum("pass an argument list" in s for s in shells) == 2
