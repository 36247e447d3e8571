"""The fake amdsmi offers only what the real PyPI ``amdsmi`` (the ``gpudra[amd]`` pin) has, as the fake pynvml
mirrors nvidia-ml-py: every ``amdsmi_*`` function with the real parameter names, order and defaults; every
class, enum member (name and value) and exception method; the keys of every dict answer; the status codes.

The real module is read from its source files, never imported: ``import amdsmi`` loads ``libamd_smi.so``, and
without it the wrapper prints to stdout and raises ``KeyError``.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import inspect
import json
from dataclasses import dataclass
from enum import Enum, IntEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gpudra.vendors.amd.smi import STATUS_CODES
from gpudra.vendors.mock import fake_amdsmi
from gpudra.vendors.mock.amd_profile import load_amd_profile, parse_amd_profile
from gpudra.vendors.mock.fake_amdsmi import AmdSmiInitFlags, FakeAmdSmi

#: (name, kind, default as source text or None): comparable between inspect and ast.
Param = tuple[str, str, str | None]


@dataclass(frozen=True)
class RealAmdSmi:
    """The parts of the real package's source this test compares: what ``amdsmi/__init__.py`` exports (name
    -> defining module), each module's tree, and the wrapper's integer constants."""

    exports: dict[str, str]
    trees: dict[str, ast.Module]
    constants: dict[str, int]

    def definition(self, name: str) -> ast.FunctionDef | ast.ClassDef:
        found = self.top_level(self.exports[name], name)
        assert found is not None, f"amdsmi exports {name} but its module does not define it"
        return found

    def top_level(self, module: str, name: str) -> ast.FunctionDef | ast.ClassDef | None:
        for node in self.trees[module].body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
                return node
        return None

    def methods(self, cls: ast.ClassDef, module: str) -> dict[str, ast.FunctionDef]:
        """``cls``'s methods, its bases' (defined in the same package) included, the nearest winning."""
        found: dict[str, ast.FunctionDef] = {}
        for base in cls.bases:
            parent = self.find_class(base.id) if isinstance(base, ast.Name) else None
            if parent is not None:
                found |= self.methods(*parent)
        return found | {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}

    def find_class(self, name: str) -> tuple[ast.ClassDef, str] | None:
        for module in self.trees:
            node = self.top_level(module, name)
            if isinstance(node, ast.ClassDef):
                return node, module
        return None

    def value(self, expr: ast.expr) -> int:
        """An enum member's value: a literal or ``amdsmi_wrapper.<CONSTANT>``."""
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            return self.constants[expr.attr]
        literal = ast.literal_eval(expr)
        assert isinstance(literal, int)
        return literal


@cache
def real_amdsmi() -> RealAmdSmi | None:
    spec = importlib.util.find_spec("amdsmi")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    trees = {p.stem: ast.parse(p.read_text(), str(p)) for p in root.glob("*.py")}
    exports = {
        alias.asname or alias.name: node.module
        for node in ast.walk(trees["__init__"])
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        for alias in node.names
    }
    constants = {
        node.targets[0].id: node.value.value
        for node in trees["amdsmi_wrapper"].body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant) and type(node.value.value) is int
    }  # fmt: skip
    return RealAmdSmi(exports, trees, constants)


def _real() -> RealAmdSmi:
    real = real_amdsmi()
    if real is None:
        pytest.skip("amdsmi is not installed (pip install gpudra[amd]; the test extra has it)")
    return real


def _real_params(fn: ast.FunctionDef) -> list[Param]:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out: list[Param] = [
        (a.arg, "positional", None if d is None else ast.unparse(d))
        for a, d in zip(positional, defaults, strict=True)
    ]
    if args.vararg is not None:
        out.append((args.vararg.arg, "var_positional", None))
    kw_defaults = [None if d is None else ast.unparse(d) for d in args.kw_defaults]
    out += [(a.arg, "keyword_only", d) for a, d in zip(args.kwonlyargs, kw_defaults, strict=True)]
    if args.kwarg is not None:
        out.append((args.kwarg.arg, "var_keyword", None))
    return [p for p in out if p[0] not in {"self", "cls"}]


_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}


def _default_text(value: object) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    if isinstance(value, Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def _fake_params(fn: Any) -> list[Param]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in {"self", "cls"}]
    return [(p.name, _KINDS[p.kind], _default_text(p.default)) for p in params]


def _fake() -> FakeAmdSmi:
    smi = FakeAmdSmi(load_amd_profile("mi300x-8-cpx-nps4"))
    smi.amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)
    return smi


FUNCTIONS = sorted(n for n in vars(FakeAmdSmi) if n.startswith("amdsmi_"))
CLASSES = sorted(n for n in vars(FakeAmdSmi) if n.startswith("AmdSmi"))
#: The fake's functions of one processor: those whose answer is a dict have the real keys.
PER_PROCESSOR = [
    n for n in FUNCTIONS if "processor_handle" in inspect.signature(vars(FakeAmdSmi)[n]).parameters
]


def test_the_fake_offers_functions_and_classes() -> None:
    assert len(FUNCTIONS) >= 10
    assert {"AmdSmiLibraryException", "AmdSmiEventReader", "AmdSmiEvtNotificationType"} <= set(CLASSES)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_exists_with_the_real_signature(name: str) -> None:
    real = _real()
    assert name in real.exports, f"the real amdsmi has no {name}"
    fn = real.definition(name)
    assert isinstance(fn, ast.FunctionDef)
    assert _fake_params(getattr(_fake(), name)) == _real_params(fn)


@pytest.mark.parametrize("name", CLASSES)
def test_every_class_exists_with_the_real_methods_and_bases(name: str) -> None:
    real = _real()
    assert name in real.exports, f"the real amdsmi has no {name}"
    cls = real.definition(name)
    assert isinstance(cls, ast.ClassDef)
    fake_cls = getattr(FakeAmdSmi, name)
    real_bases = [ast.unparse(b) for b in cls.bases]
    fake_bases = [b.__name__ for b in fake_cls.__bases__ if b is not object]
    assert fake_bases == real_bases
    if issubclass(fake_cls, Enum):
        return  # members: the enum test
    real_methods = real.methods(cls, real.exports[name])
    own = {n: f for n, f in vars(fake_cls).items() if callable(f) and (n[0] != "_" or n in real_methods)}
    if "__init__" in real_methods:
        own["__init__"] = fake_cls.__init__  # its own or inherited: constructed as the real one is
    for method, fn in own.items():
        assert method in real_methods, f"the real {name} has no {method}"
        assert _fake_params(fn) == _real_params(real_methods[method]), method


@pytest.mark.parametrize("name", [n for n in CLASSES if issubclass(getattr(FakeAmdSmi, n), IntEnum)])
def test_enum_members_have_the_real_names_and_values(name: str) -> None:
    real = _real()
    cls = real.definition(name)
    assert isinstance(cls, ast.ClassDef)
    real_members = {
        node.targets[0].id: real.value(node.value)
        for node in cls.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    fake_members = {m: int(v) for m, v in getattr(FakeAmdSmi, name).__members__.items()}
    assert fake_members.items() <= real_members.items()


def _instance_attributes(cls: ast.ClassDef, methods: dict[str, ast.FunctionDef]) -> set[str]:
    return {
        node.attr
        for fn in methods.values()
        for node in ast.walk(fn)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name) and node.value.id == "self"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "instance"),
    [
        ("AmdSmiLibraryException", lambda: fake_amdsmi.AmdSmiLibraryException(2)),
        ("AmdSmiParameterException", lambda: fake_amdsmi.AmdSmiParameterException(1, str)),
        ("AmdSmiEventReader", lambda: _reader()),
    ],
)
def test_instance_attributes_are_the_real_ones(name: str, instance: Any) -> None:
    real = _real()
    found = real.find_class(name)
    assert found is not None
    real_attrs = _instance_attributes(found[0], real.methods(*found))
    public = {a for a in vars(instance()) if not a.startswith("_")}
    assert public <= real_attrs


def _reader() -> object:
    smi = _fake()
    handle = smi.amdsmi_get_processor_handles()[0]
    return smi.AmdSmiEventReader(handle, [smi.AmdSmiEvtNotificationType.GPU_PRE_RESET])


def _dict_keys(fn: ast.FunctionDef) -> set[str]:
    """The string keys of the dict literals a real answer is built from."""
    return {
        key.value
        for node in ast.walk(fn)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    }


@pytest.mark.parametrize("name", PER_PROCESSOR)
def test_dict_answers_have_the_real_keys(name: str) -> None:
    real = _real()
    fn = real.definition(name)
    assert isinstance(fn, ast.FunctionDef)
    smi = _fake()
    answer = getattr(smi, name)(smi.amdsmi_get_processor_handles()[0])  # GPU 0's primary processor
    if isinstance(answer, dict):
        assert set(answer) == _dict_keys(fn)
    else:
        assert not _dict_keys(fn), f"the real {name} answers a dict"


def test_events_carry_what_the_real_reader_returns() -> None:
    real = _real()
    found = real.find_class("AmdSmiEventReader")
    assert found is not None
    read = real.methods(*found)["read"]
    # The real event's processor_handle: a new amdsmi_processor_handle (ctypes.c_void_p) of the pointer.
    made = {
        ast.unparse(node.targets[0]): ast.unparse(node.value.func)
        for node in ast.walk(read)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
    }
    assert made.get("processor_handle") == "amdsmi_wrapper.amdsmi_processor_handle"

    data = json.loads((resources.files("gpudra.vendors.mock") / "profiles" / "mi210-pcie.json").read_text())
    data["gpus"][0]["events"] = [{"id": "r", "type": "gpu_pre_reset", "message": "m"}]
    smi = FakeAmdSmi(parse_amd_profile(json.dumps(data)))
    smi.amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)
    handle = smi.amdsmi_get_processor_handles()[0]
    with smi.AmdSmiEventReader(handle, [smi.AmdSmiEvtNotificationType.GPU_PRE_RESET]) as reader:
        [event] = reader.read(0)
    assert set(event) == _dict_keys(read)
    assert type(event["processor_handle"]) is ctypes.c_void_p
    assert event["processor_handle"].value == handle.value
    assert event["event"] == "GPU_PRE_RESET"


def test_status_codes_are_the_real_values() -> None:
    real = _real()
    assert {name: real.constants[name] for name in STATUS_CODES} == STATUS_CODES
