from __future__ import annotations

import numpy as np
import pytest

from hpcrl.api.namedarray import NamedArray, Schema, SchemaError, concat, namedarray, stack
from hpcrl.api.trainer import SampleBatch


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


def test_fields_order_and_defaults():
    x = Obs(obs=np.zeros(3))
    assert x.keys() == ["obs", "state"]
    assert x.state is None
    with pytest.raises(TypeError, match="missing required field 'obs'"):
        Obs()
    with pytest.raises(TypeError, match="has no field 'bogus'"):
        Obs(obs=np.zeros(1), bogus=1)


def test_indexing_slicing_and_setitem():
    x = make()
    y = x[1:3]
    assert isinstance(y, Nested) and isinstance(y.obs, Obs)
    assert y.obs.obs.shape == (2, 3) and y.hx.shape == (2, 2, 5)
    assert y.obs.state is None
    x[0] = make(1)[0]
    assert np.array_equal(x.obs.obs[0], np.arange(3, dtype=np.float32))
    idx = np.array([3, 1])
    assert np.array_equal(x[idx].obs.obs[:, 0], np.array([9.0, 3.0], np.float32))
    assert x["hx"] is x.hx
    with pytest.raises(KeyError, match="no field 'nope'"):
        x["nope"]


def test_stack_concat_and_mismatch():
    a, b = make(2), make(3)
    c = concat([a, b])
    assert c.obs.obs.shape == (5, 3)
    s = stack([a, a])
    assert s.hx.shape == (2, 2, 2, 5)
    with pytest.raises(ValueError, match="None in some"):
        stack([Obs(obs=np.zeros(1)), Obs(obs=np.zeros(1), state=np.zeros(1))])


def test_dynamic_and_extra_fields():
    d = NamedArray(a=np.zeros(2), b=None)
    assert d.keys() == ["a", "b"]
    sb = SampleBatch(obs=NamedArray(obs=np.zeros((3, 2, 1))), custom=np.ones((3, 2)))
    assert "custom" in sb.keys() and sb[1:].custom.shape == (2, 2)
    sb.another = np.zeros((3, 2))
    assert sb.keys()[-1] == "another"
    with pytest.raises(AttributeError):
        Obs(obs=np.zeros(1)).unknown = 1  # type: ignore[attr-defined]


def test_torch_roundtrip():
    torch = pytest.importorskip("torch")
    x = make()
    t = x.to_torch()
    assert isinstance(t.obs.obs, torch.Tensor)
    back = t.numpy()
    assert back == x
    s = stack([t, t])
    assert s.hx.shape == (2, 4, 2, 5)


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
    batch, leaves = schema._matcher(x)
    assert batch == (3,) and [a is b for a, b in zip(leaves, x.leaves())] == [True, True, True]
    assert schema._matcher(_outer(rows=7))[0] == (7,)  # other batch sizes: same schema
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
        assert schema._matcher(other) is None, i
    extra = NamedArray(a=np.zeros((2, 1)))
    extra.b = np.zeros((2, 1))  # a field added after construction changes the structure
    assert Schema.of(NamedArray(a=np.zeros((2, 1))))._matcher(extra) is None
    assert Schema.of(x, batch_ndim=2)._matcher(_Outer(obs=_Inner(obs=np.zeros((3,), np.float32)))) is None
    assert schema._matcher("not a NamedArray") is None


def test_generated_code_takes_any_field_name():
    odd = NamedArray(**{"agent-0": np.zeros((2, 1), np.float32), "x'); import os; ('": np.ones((2, 3), np.int8)})
    schema = Schema.of(odd)
    batch, leaves = schema._matcher(odd)
    assert batch == (2,) and len(leaves) == 2
    rebuilt = schema.unpack(schema.pack(odd), (2,))
    assert rebuilt.keys() == odd.keys() and np.all(rebuilt["x'); import os; ('"] == 1)
