"""The wire layout of NamedArrays (hpcrl.comm.schema): schemas, packing, the generated matcher and builders,
and how a receiver finds the classes a schema names."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hpcrl.api.namedarray import NamedArray, namedarray
from hpcrl.api.trainer import SampleBatch
from hpcrl.comm.codegen import class_name, resolve_class
from hpcrl.comm.schema import Schema, SchemaError, from_flat


@namedarray
class Obs:
    obs: np.ndarray
    state: np.ndarray | None = None


@namedarray
class Nested:
    obs: Obs
    hx: np.ndarray


def make(b: int = 4) -> Nested:
    return Nested(obs=Obs(obs=np.arange(b * 3, dtype=np.float32).reshape(b, 3)), hx=np.zeros((b, 2, 5), np.float64))


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    ],
)
def test_schema_pack_unpack_every_dtype(dtype):
    x = NamedArray(
        v=(np.arange(24) % 2).astype(dtype).reshape(4, 3, 2), none=None, sub=NamedArray(w=np.ones((4,), dtype))
    )
    schema = Schema.of(x)
    again = Schema.from_json(schema.to_json())
    assert again == schema
    buf = schema.pack(x)
    assert buf.nbytes == schema.nbytes((4,))
    y = again.unpack(buf, (4,))
    assert y == x and y.none is None and y.keys() == ["v", "none", "sub"]


def test_schema_two_batch_dims_and_class_restore():
    sb = SampleBatch(obs=Obs(obs=np.random.rand(5, 3, 2).astype(np.float32)), reward=np.zeros((5, 3, 1), np.float32))
    schema = Schema.of(sb, batch_ndim=2)
    y = schema.unpack(schema.pack(sb), (5, 3))
    assert isinstance(y, SampleBatch) and isinstance(y.obs, Obs)
    assert y == sb


def test_schema_errors():
    x = make()
    schema = Schema.of(x)
    with pytest.raises(SchemaError, match="fields differ"):
        schema.pack(NamedArray(obs=np.zeros((4, 3))))
    with pytest.raises(SchemaError, match=r"obs\.obs.*shape \(4,\)"):
        schema.pack(Nested(obs=Obs(obs=np.zeros((4, 4), np.float32)), hx=np.zeros((4, 2, 5))))
    with pytest.raises(SchemaError, match="needs"):
        schema.unpack(np.zeros(10, np.uint8), (4,))
    with pytest.raises(SchemaError, match="malformed"):
        Schema.from_json("{}")
    with pytest.raises(SchemaError, match="not allowed"):
        Schema.from_json('{"version":1,"batch_ndim":1,"leaves":[["a","|O",[1]]],"nodes":[["","x",["a"]]]}')
    with pytest.raises(SchemaError, match="cannot go on the wire"):
        Schema.of(NamedArray(a=np.array([object()] * 2)))


# ---------------------------------------------------------------- the channels' fast structure check
@namedarray
class _Inner:
    obs: np.ndarray
    state: np.ndarray | None = None


@namedarray
class _Outer:
    obs: _Inner
    hx: np.ndarray | None = None
    on_reset: np.ndarray | None = None


def _outer(rows: int = 3) -> _Outer:
    return _Outer(
        obs=_Inner(obs=np.zeros((rows, 4), np.float32)),
        hx=np.ones((rows, 2, 5), np.float32),
        on_reset=np.zeros((rows, 1), bool),
    )


def test_matcher_accepts_exactly_the_schema_structure():
    x = _outer()
    schema = Schema.of(x)
    batch, leaves = schema.matcher(x)
    assert batch == (3,) and [a is b for a, b in zip(leaves, x.leaves())] == [True, True, True]
    assert schema.matcher(_outer(rows=7))[0] == (7,)  # other batch sizes: same schema
    changed = [
        _Outer(obs=_Inner(obs=np.zeros((3, 4), np.float64)), hx=x.hx, on_reset=x.on_reset),  # dtype
        _Outer(obs=_Inner(obs=np.zeros((3, 5), np.float32)), hx=x.hx, on_reset=x.on_reset),  # row shape
        _Outer(obs=_Inner(obs=np.zeros((4, 4), np.float32)), hx=x.hx, on_reset=x.on_reset),  # batch disagrees
        _Outer(obs=_Inner(obs=x.obs.obs, state=np.zeros((3, 1), np.float32)), hx=x.hx, on_reset=x.on_reset),
        _Outer(obs=_Inner(obs=x.obs.obs), hx=None, on_reset=x.on_reset),  # a leaf became None
        _Outer(obs=NamedArray(obs=x.obs.obs, state=None), hx=x.hx, on_reset=x.on_reset),  # other node class
        _Outer(obs=_Inner(obs=x.obs.obs.tolist()), hx=x.hx, on_reset=x.on_reset),  # not an ndarray
        NamedArray(obs=x.obs, hx=x.hx, on_reset=x.on_reset),  # other root class
    ]
    for i, other in enumerate(changed):
        assert schema.matcher(other) is None, i
    extra = NamedArray(a=np.zeros((2, 1)))
    extra.b = np.zeros((2, 1))  # a field added after construction changes the structure
    assert Schema.of(NamedArray(a=np.zeros((2, 1)))).matcher(extra) is None
    assert Schema.of(x, batch_ndim=2).matcher(_Outer(obs=_Inner(obs=np.zeros((3,), np.float32)))) is None
    assert schema.matcher("not a NamedArray") is None


def test_generated_code_takes_any_field_name():
    odd = NamedArray(**{"agent-0": np.zeros((2, 1), np.float32), "x'); import os; ('": np.ones((2, 3), np.int8)})
    schema = Schema.of(odd)
    batch, leaves = schema.matcher(odd)
    assert batch == (2,) and len(leaves) == 2
    rebuilt = schema.unpack(schema.pack(odd), (2,))
    assert rebuilt.keys() == odd.keys() and np.all(rebuilt["x'); import os; ('"] == 1)


# ---------------------------------------------------------------- finding node classes by name
def test_classes_resolve_where_their_module_binds_them():
    assert resolve_class(class_name(Nested)) is Nested
    assert resolve_class(class_name(SampleBatch)) is SampleBatch
    assert resolve_class(class_name(NamedArray)) is NamedArray
    nodes = Schema.of(make(2)).nodes
    rebuilt = from_flat({"obs.obs": np.zeros((2, 3)), "hx": np.ones((2, 2, 5))}, nodes)
    assert type(rebuilt) is Nested and type(rebuilt.obs) is Obs and rebuilt.obs.state is None


def test_classes_defined_in_functions_resolve_and_the_newest_definition_wins():
    def define(tag: str) -> type:
        @namedarray
        class Local:
            a: np.ndarray

        Local.tag = tag  # type: ignore[attr-defined]
        return Local

    first = define("first")
    assert resolve_class(class_name(first)) is first
    second = define("second")  # same module and qualname: a redefinition
    assert class_name(second) == class_name(first)
    assert resolve_class(class_name(first)) is second
    x = second(a=np.zeros((2, 1), np.float32))
    schema = Schema.of(x)
    assert type(schema.unpack(schema.pack(x), (2,))) is second


def test_names_that_are_no_namedarray_class_give_namedarray_and_run_nothing():
    assert "json.tool" not in sys.modules
    for name in [
        "os:system",
        "builtins:object",
        "json.tool:main",
        "hpcrl.nonexistent:X",
        "",
        "no-colon",
        f"{__name__}:make",
    ]:
        assert resolve_class(name) is NamedArray, name
    assert "json.tool" not in sys.modules  # only hpcrl modules are ever imported for a name
    assert resolve_class("hpcrl.api.data:SampleBatch") is SampleBatch
