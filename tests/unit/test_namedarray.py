from __future__ import annotations

import numpy as np
import pytest

from hpcrl.api.namedarray import LeafSpec, NamedArray, concat, leaf_specs, namedarray, stack
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


def test_leaf_specs_describe_paths_dtypes_and_row_shapes():
    x = make(4)
    assert leaf_specs(x) == (LeafSpec("obs.obs", "<f4", (3,)), LeafSpec("hx", "<f8", (2, 5)))
    assert leaf_specs(x, batch_ndim=2) == (LeafSpec("obs.obs", "<f4", ()), LeafSpec("hx", "<f8", (5,)))
    assert [s.row_nbytes for s in leaf_specs(x)] == [12, 80]
    assert leaf_specs(NamedArray(a=None)) == ()
    with pytest.raises(ValueError, match=r"field 'obs\.obs': shape \(4, 3\) has fewer than 3 batch dimension"):
        leaf_specs(x, batch_ndim=3)
    pytest.importorskip("torch")
    assert leaf_specs(x.to_torch()) == leaf_specs(x)
