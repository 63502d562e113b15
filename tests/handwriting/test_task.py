import numpy as np
import pytest
import torch

pytest.importorskip("HersheyFonts")

from carousel.tasks import get_task, make_task
from carousel.tasks.handwriting import HandwritingConfig


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registered_with_splits():
    spec = get_task("handwriting")
    assert "CTC" in spec.summary and "1%" in spec.success
    task = make_task("handwriting", HandwritingConfig(held_out_faces=("timesi",), eval_size=4))
    assert task.eval_splits == ("new_words", "held_out_faces")
    assert make_task("handwriting").eval_splits == ("new_words",)
    g = torch.Generator().manual_seed(0)
    b = task.batch("train", 3, generator=g)
    # grouped by length: every word of a batch has the same number of letters
    tl = b.extras["target_lengths"]
    assert b.per_step is False and bool((tl == tl[0]).all())
    same = task.batch("train", 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b.inputs, same.inputs)
    held = list(task.eval_batches("held_out_faces", generator=g))
    assert sum(x.batch_size for x in held) == 4
    with pytest.raises(ValueError, match="unknown split"):
        task._eval_samples("nope")


def test_engine_trains_and_serves_the_checkpoint(tmp_path, one_thread):
    from carousel.cli.serve import load_any_recognizer
    from carousel.handwriting.synth import WriterStyle, write_word
    from carousel.train import load_config, train
    from carousel.web import HandwritingApp

    cfg = load_config(
        "handwriting",
        overrides=[
            "train.steps=2", "train.batch_size=2", "train.eval_every=2",
            "train.checkpoint_every=2", "data.eval_size=2", "data.faces=[futural]",
            "model.hidden_size=8", "model.num_layers=1", "model.stride=3",
            f"log.dir={tmp_path}", "log.progress=off", "log.plot=false",
            "log.tensorboard=off",
        ],
    )  # fmt: skip
    result = train(cfg)
    assert "cer" in result.evaluation["new_words"]
    model, meta = load_any_recognizer(str(tmp_path))
    assert model.stride == 3 and meta["config"]["data"]["faces"] == ("futural",)
    strokes = write_word("ab", "futural", WriterStyle(), np.random.default_rng(0))
    body = {"strokes": [s[:, :2].tolist() for s in strokes]}
    assert isinstance(HandwritingApp(model, meta).recognize(body)["text"], str)
