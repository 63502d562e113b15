"""HDF5 export in the LSTMVis layout (carousel.analysis.export)."""

import numpy as np
import pytest
import torch

import carousel
from carousel.analysis import export_hdf5, export_lstmvis, read_hdf5, record, traces

h5py = pytest.importorskip("h5py")


def test_round_trip_with_lengths(tmp_path):
    lstm = carousel.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 3)
    lengths = torch.tensor([6, 2, 4])
    rec = record(lstm, x, forward_kwargs={"lengths": lengths}, grad=False)
    ids = torch.randint(0, 9, (6, 3))
    path = export_hdf5(rec, tmp_path / "sub" / "states.h5", token_ids=ids, attrs={"note": "x"})
    data = read_hdf5(path)
    assert data["offsets"].tolist() == [0, 6, 8, 12]
    assert data["attrs"]["format_version"] == 1 and data["attrs"]["note"] == "x"
    assert set(data["states"]) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    assert data["tracks"]["l1_reverse"] == {
        "module": "", "layer": 1, "direction": 1, "fields": ["h", "c"],
        "gates": ["i", "f", "g", "o"],
    }  # fmt: skip
    for b, n in enumerate(lengths.tolist()):
        rows = slice(data["offsets"][b], data["offsets"][b + 1])
        assert data["word_ids"][rows].tolist() == ids[:n, b].tolist()
        for track, lay in rec.layers.items():
            for f, z in lay.states.items():
                np.testing.assert_array_equal(data["states"][track][f][rows], z[:n, b].numpy())
            for g, z in lay.gates.items():
                np.testing.assert_array_equal(data["gates"][track][g][rows], z[:n, b].numpy())
    with h5py.File(path) as f:  # LSTMVis's flat names are links to the same data
        assert f["states2"].id == f["states/l1/c"].id and f["output1"].id == f["states/l0/h"].id
        assert "states3" not in f


def test_lstmvis_project_and_default_ids(tmp_path):
    x = torch.nn.functional.one_hot(torch.randint(0, 3, (5, 2)), 3).float()
    tr = traces(carousel.GRU(3, 4), x)
    folder = export_lstmvis(tr, tmp_path / "proj", vocabulary=["a", "b c", " "], name="demo")
    data = read_hdf5(folder / "states.hdf5")
    assert data["word_ids"].tolist() == x.argmax(-1).T.reshape(-1).tolist()
    assert (folder / "words.dict").read_text().splitlines() == ["a 0", "b_c 1", "<space> 2"]
    yml = (folder / "lstm.yml").read_text()
    assert "{type: state, layer: 1, path: states1}" in yml and 'name: "demo"' in yml
    with h5py.File(folder / "states.hdf5") as f:  # a GRU has no c: its state is h
        assert f["states1"].id == f["states/l0/h"].id


def test_errors(tmp_path):
    tr = traces(carousel.RNN(3, 4), torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match=r"token_ids must be an integer tensor of shape \(T, B\)"):
        export_hdf5(tr, tmp_path / "a.h5", token_ids=torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="expected a Recording or a dict of LayerRecord"):
        export_hdf5({"l0": 1}, tmp_path / "a.h5")
    with pytest.raises(ValueError, match="vocabulary has 1 words"):
        export_lstmvis(tr, tmp_path / "p", token_ids=torch.ones(5, 2, dtype=torch.long),
                       vocabulary=["a"])  # fmt: skip
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(ValueError, match="is not a carousel-states file"):
        read_hdf5(tmp_path / "foreign.h5")
