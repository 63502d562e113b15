import json

import numpy as np
import pytest
import torch

pytest.importorskip("HersheyFonts")

from carousel.ctc import ctc_loss
from carousel.handwriting.recognizer import (
    RecognizerTrainConfig,
    _batch_stream,
    _lr_factor,
    _model_from,
    evaluate_recognizer,
    load_recognizer,
    recognize,
    save_recognizer,
    train_recognizer,
)
from carousel.handwriting.synth import WriterStyle, write_word
from carousel.models.config import ModelConfig
from carousel.models.ctc_recognizer import CTCRecognizer
from carousel.tasks.handwriting import HandwritingConfig, HandwritingData, collate


def small_model(**kw):
    cfg = ModelConfig(hidden_size=12, num_layers=2, bidirectional=True)
    return CTCRecognizer(4, 6, cfg, stride=3, frontend_size=8, **kw)


def test_masked_lengths_equal_unpadded_runs():
    torch.manual_seed(0)
    m = small_model().double()
    lengths = [11, 7, 3]
    x = torch.randn(11, 3, 4, dtype=torch.float64)
    for b, n in enumerate(lengths):
        x[n:, b] = 0
    out = m(x, lengths=torch.tensor(lengths))
    assert out.lengths.tolist() == [4, 3, 1]
    for b, n in enumerate(lengths):
        alone = m(x[:n, b : b + 1]).output[:, 0]
        torch.testing.assert_close(out.output[: out.lengths[b], b], alone)


def test_padded_fast_path_matches_the_packed_run():
    # unequal lengths on the CPU: each direction runs densely (the backward one on sequences
    # reversed within their lengths) instead of packed; outputs and gradients must agree
    torch.manual_seed(0)
    m = small_model().double()
    lengths = torch.tensor([11, 7, 3, 9])
    x = torch.randn(11, 4, 4, dtype=torch.float64)
    z = m._frames(x)
    assert m._padded_core_applies(z)
    fast = m(x, lengths=lengths)
    assert fast.state is None
    packed, _ = m.rnn(z, lengths=m.output_lengths(lengths))
    ref = m.head(packed).log_softmax(-1)
    torch.testing.assert_close(fast.output, ref)
    upstream = torch.randn_like(ref)
    grads = []
    for out in (fast.output, ref):
        m.zero_grad()
        (out * upstream).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    # equal lengths take the layer's dense path and keep the final state
    same = m(x, lengths=torch.tensor([11, 10, 11, 11]))  # 4 frames each
    assert same.state is not None


def test_trace_matches_forward_and_exposes_cells():
    m = small_model().double()
    x = torch.randn(10, 4, dtype=torch.float64)
    tr = m.trace(x)
    torch.testing.assert_close(tr.log_probs, m(x.unsqueeze(1)).output[:, 0])
    assert tr.cells.shape == (4, 4, 12)  # (T', L*D, H)
    assert tr.frame_of_point.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_errors():
    with pytest.raises(ValueError, match=r"expected inputs of shape \(T, B, 4\)"):
        small_model()(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="stride > 1 needs a front end"):
        CTCRecognizer(4, 6, stride=2, frontend_size=0)
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        CTCRecognizer(4, 6, {"hidden_size": 3})


@pytest.fixture
def one_thread():
    # a busy 2-core machine makes two intra-op threads far slower than one
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_one_batch_is_learned(one_thread):
    # learning, fast: CTC loss on one fixed batch of real samples falls by more than half
    torch.manual_seed(0)
    data = HandwritingData(HandwritingConfig(faces=("futural",), variation=0.3))
    samples = [data.sample(np.random.default_rng(i)) for i in range(4)]
    batch = collate(samples)
    m = CTCRecognizer(4, 27, ModelConfig(hidden_size=24, num_layers=1, bidirectional=True))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = m(batch.inputs, lengths=batch.lengths)
        loss = ctc_loss(out.output, batch.targets, out.lengths, batch.target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = RecognizerTrainConfig(hidden_size=8, num_layers=1, frontend_size=8)
    m = _model_from(cfg)
    save_recognizer(tmp_path / "ck", m, cfg, {"cer": 0.5})
    save_recognizer(tmp_path / "ck", m, cfg, {"cer": 0.4})  # overwrite in place
    m2, meta = load_recognizer(tmp_path / "ck")
    assert meta["metrics"] == {"cer": 0.4}
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, m2.state_dict()[k])
    strokes = write_word("ab", "futural", WriterStyle(), np.random.default_rng(0))
    r = recognize(m2, strokes)
    assert isinstance(r.text, str) and r.log_probs.shape[1] == 27
    assert set(r.text) <= set("abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(FileNotFoundError, match="not a handwriting checkpoint"):
        load_recognizer(tmp_path / "none")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged weights"):
        load_recognizer(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(ValueError, match="not a carousel handwriting recogniser"):
        load_recognizer(tmp_path / "ck")


def test_train_loop_runs_and_checkpoints(tmp_path):
    cfg = RecognizerTrainConfig(
        data=HandwritingConfig(faces=("futural",), eval_size=4),
        hidden_size=8, num_layers=1, frontend_size=8, batch_size=4, max_steps=3,
        eval_every=2, data_workers=0,
    )  # fmt: skip
    m = train_recognizer(cfg, tmp_path)
    assert m["step"] == 3 and 0 <= m["new_words/cer"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    load_recognizer(tmp_path / "last")
    load_recognizer(tmp_path / "best")
    with pytest.raises(ValueError, match="clock must be one of"):
        train_recognizer(RecognizerTrainConfig(clock="sundial"), tmp_path)
    with pytest.raises(ValueError, match="schedule must be one of"):
        train_recognizer(RecognizerTrainConfig(schedule="lunar"), tmp_path)
    with pytest.raises(ValueError, match="reuse must be >= 1, got 0"):
        train_recognizer(RecognizerTrainConfig(reuse=0), tmp_path)
    with pytest.raises(ValueError, match="warmup must be in"):
        train_recognizer(RecognizerTrainConfig(schedule="cosine", warmup=1.5), tmp_path)


def test_learning_rate_schedules():
    step = RecognizerTrainConfig(schedule="step")
    assert [_lr_factor(step, f) for f in (0.0, 0.59, 0.61, 0.9)] == [1.0, 1.0, 0.5, 0.25]
    cos = RecognizerTrainConfig(schedule="cosine", warmup=0.1, final_lr=0.02)
    assert _lr_factor(cos, 0.05) == pytest.approx(0.5)
    assert _lr_factor(cos, 0.1) == pytest.approx(1.0)
    assert _lr_factor(cos, 0.55) == pytest.approx(0.51)
    assert _lr_factor(cos, 1.0) == pytest.approx(0.02)


def test_batch_stream_groups_by_length_and_reuses_samples():
    cfg = RecognizerTrainConfig(
        data=HandwritingConfig(faces=("futural",)), batch_size=4, length_pool=3, reuse=2,
        data_workers=0,
    )  # fmt: skip
    cpu: dict = {}
    stream = _batch_stream(cfg, cpu)
    batches = [next(stream) for _ in range(3 + 6)]  # the first lot, then a pool of two lots
    stream.close()
    first = {id(s) for b in batches[:3] for s in b}
    second = {id(s) for b in batches[3:] for s in b}
    assert len(first) == 12 and len(second) == 24
    assert first <= second  # each sample is trained in two pools
    lengths = sorted(len(s.features) for b in batches[3:] for s in b)
    for b in batches[3:]:  # sorted by length, then cut: each batch is a run of that order
        got = sorted(len(s.features) for s in b)
        i = lengths.index(got[0])
        assert got == lengths[i : i + 4]
    assert cpu and all(v > 0 for v in cpu.values())


@pytest.mark.slow
def test_reads_new_words_after_short_training(tmp_path):
    # learning proven by learning: one face, mild variation, 4 minutes of one thread
    cfg = RecognizerTrainConfig(
        data=HandwritingConfig(faces=("futural",), variation=0.5, eval_size=100),
        hidden_size=64, num_layers=2, minutes=4, eval_every=200,
    )  # fmt: skip
    m = train_recognizer(cfg, tmp_path)
    assert m["new_words/cer"] < 0.10
    model, _ = load_recognizer(tmp_path / "best")
    data = HandwritingData(cfg.data)
    assert evaluate_recognizer(model, data.eval_set("new_words"))["cer"] < 0.10


def test_english_char_lm_prefers_english_spellings():
    from carousel.handwriting.recognizer import english_char_lm
    from carousel.tasks.handwriting import ALPHABET

    lm = english_char_lm(order=4)
    for good, bad in (("people", "peqple"), ("water", "watcr"), ("number", "nunber")):
        assert lm.log_prob(ALPHABET.encode(good)) > lm.log_prob(ALPHABET.encode(bad)) + 2.0
    with pytest.raises(ValueError, match="max_repeat"):
        english_char_lm(max_repeat=0)
