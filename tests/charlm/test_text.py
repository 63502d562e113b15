"""Corpus reading, the default corpus, the split, vocabularies and TBPTT stream batching."""

from __future__ import annotations

import pytest
import torch

from carousel.text.batching import StreamBatches, stream_rows
from carousel.text.corpus import (
    DEFAULT_CORPUS_MODULES,
    CorpusError,
    TextSource,
    default_corpus,
    load_texts,
    read_text_file,
    split_texts,
)
from carousel.text.vocab import UNKNOWN_TOKEN, Vocabulary, tokenize

# ---------------------------------------------------------------------------- files


def test_read_text_file_normalises_newlines_and_bom(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfline one\r\nline two\rend")
    assert read_text_file(f) == "line one\nline two\nend"


def test_other_encodings(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin\.txt' is not valid utf-8: byte 0xe9 at offset 3"):
        read_text_file(f)
    assert read_text_file(f, encoding="latin-1") == "café au lait"
    g = tmp_path / "wide.txt"
    g.write_bytes("wide text".encode("utf-16"))
    assert read_text_file(g, encoding="utf-16") == "wide text"


def test_bad_files_are_named(tmp_path):
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CorpusError, match=r"image\.png' looks binary \(NUL byte at offset 8\)"):
        read_text_file(binary)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match=r"empty\.txt' is empty"):
        read_text_file(empty)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt' does not exist"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_text_file(tmp_path)
    with pytest.raises(LookupError, match="unknown encoding 'no-such-codec'"):
        read_text_file(empty, encoding="no-such-codec")


def test_load_texts_files_and_folders(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("ay\n")
    (tmp_path / "d" / "empty.txt").write_text("")  # skipped inside a folder
    (tmp_path / "d" / ".hidden").write_bytes(b"\x00binary")  # hidden: skipped
    (tmp_path / "one.txt").write_text("one\n")
    sources = load_texts([tmp_path / "one.txt", tmp_path / "d"])
    assert [s.text for s in sources] == ["one\n", "bee\n", "ay\n"]
    assert sources[1].name.endswith("b.txt")
    only_txt = load_texts(tmp_path / "d", pattern="sub/*.txt")
    assert [s.text for s in only_txt] == ["ay\n"]
    (tmp_path / "d" / "blob.bin").write_bytes(b"ab\x00cd")
    with pytest.raises(ValueError, match=r"blob\.bin' looks binary"):
        load_texts(tmp_path / "d")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match=r"holds no non-empty file matching '\*\*/\*'"):
        load_texts(tmp_path / "e")
    with pytest.raises(ValueError, match="at least one file"):
        load_texts([])


def test_default_corpus_is_the_stdlib_source():
    sources = default_corpus()
    assert [s.name for s in sources] == [f"stdlib:{m}" for m in DEFAULT_CORPUS_MODULES]
    assert "def parse_args" in sources[DEFAULT_CORPUS_MODULES.index("argparse")].text
    total = sum(len(s.text) for s in sources)
    assert 500_000 < total < 3_000_000
    with pytest.raises(FileNotFoundError, match="no source file for the standard library"):
        default_corpus(["no_such_module_xyz"])


def test_split_holds_out_the_end_at_a_line_start():
    docs = [TextSource("a", "x" * 50 + "\n" + "y" * 40 + "\n"), TextSource("b", "tail line\n")]
    sp = split_texts(docs, valid_fraction=0.1)
    assert sp.train + sp.valid == "".join(d.text for d in docs)
    assert sp.valid == "tail line\n"
    assert sp.names == ("a", "b")
    # documents without a final newline get one, so lines never merge across documents
    sp2 = split_texts([TextSource("a", "ab\ncd"), TextSource("b", "ef\ngh")], valid_fraction=0.3)
    assert sp2.train + sp2.valid == "ab\ncd\nef\ngh\n"
    with pytest.raises(ValueError, match=r"valid_fraction must be in \(0, 1\), got 1.5"):
        split_texts(docs, valid_fraction=1.5)
    with pytest.raises(ValueError, match="too short for a split"):
        split_texts([TextSource("a", "ab")], valid_fraction=0.1, min_valid_chars=10)


# ---------------------------------------------------------------------------- vocabulary


def test_word_tokenizer_is_lossless():
    text = 'def f(x):\n    return "a, b"  # done\n\tEnd.'
    toks = tokenize(text, "word")
    assert "".join(toks) == text
    assert " return" in toks and "def" in toks and '"' in toks


def test_char_vocab_unknown_policies():
    train = "hello world"
    v = Vocabulary.build(train)
    assert v.tokens[0] == UNKNOWN_TOKEN and v.unknown_id == 0
    assert list(v.tokens[1:]) == sorted(set(train))
    ids = v.encode("held!")
    assert ids.tolist()[-1] == 0  # '!' unseen -> <unk>
    assert v.decode(ids) == "held\ufffd"
    skip = Vocabulary.build(train, unknown="skip")
    assert skip.unknown_id is None and len(skip) == len(set(train))
    assert skip.decode(skip.encode("held!")) == "held"
    strict = Vocabulary.build(train, unknown="error")
    with pytest.raises(ValueError, match=r"validation text holds 2 char\(s\) not in the voc.*'!'"):
        strict.encode("he!!o", name="validation text")


def test_word_vocab_size_limit_and_unknown():
    text = "the cat and the dog and the bird"
    v = Vocabulary.build(text, unit="word", max_size=4)
    assert len(v) == 4
    # by frequency, ties by the token itself
    assert v.tokens == (UNKNOWN_TOKEN, " and", " the", " bird")
    ids = v.encode("the cat and the")
    assert v.decode(ids) == " <unk> <unk> and the"
    with pytest.raises(ValueError, match="max_size must be >= 2"):
        Vocabulary.build(text, unit="word", max_size=1)


def test_vocab_roundtrip_and_errors():
    v = Vocabulary.build("abcabc", min_count=1)
    assert Vocabulary.from_dict(v.to_dict()) == v
    with pytest.raises(ValueError, match="expected keys"):
        Vocabulary.from_dict({"tokens": ["a"]})
    with pytest.raises(ValueError, match="is reserved"):
        Vocabulary(["a", UNKNOWN_TOKEN])
    with pytest.raises(ValueError, match="appears more than once"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        Vocabulary(["ab"])
    with pytest.raises(ValueError, match="unknown must be one of"):
        Vocabulary(["a"], unknown="ignore")
    with pytest.raises(ValueError, match="text is empty"):
        Vocabulary.build("")
    with pytest.raises(ValueError, match=r"id 9 out of range \[0, 4\)"):
        v.decode([9])
    assert Vocabulary.build("aab", min_count=2).tokens == (UNKNOWN_TOKEN, "a")


# ---------------------------------------------------------------------------- batching


def test_stream_layout_carries_each_row_across_batches():
    ids = torch.arange(103)
    batches = StreamBatches(ids, batch_size=4, tbptt_len=7)
    L = 102 // 4
    assert batches.row_length == L and len(batches) == -(-L // 7)
    rows_in = torch.cat([b.inputs for b in batches])  # (L, B)
    rows_tg = torch.cat([b.targets for b in batches])
    for b in range(4):
        # row b is one contiguous piece of the stream; targets are the next tokens
        torch.testing.assert_close(rows_in[:, b], ids[b * L : (b + 1) * L])
        torch.testing.assert_close(rows_tg[:, b], ids[b * L + 1 : (b + 1) * L + 1])
    first, second = batches[0], batches[1]
    assert first.inputs.shape == (7, 4) and first.index == 0
    # batch k+1 continues batch k in every row
    torch.testing.assert_close(second.inputs[0], first.inputs[-1] + 1)
    assert batches[-1].inputs.shape[0] == L - 7 * (len(batches) - 1)
    with pytest.raises(IndexError, match="out of range"):
        batches[len(batches)]


def test_stream_errors():
    with pytest.raises(ValueError, match="too short for batch_size=8"):
        stream_rows(torch.arange(5), 8)
    with pytest.raises(ValueError, match=r"expected ids of shape \(N,\)"):
        stream_rows(torch.zeros(2, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="tbptt_len must be >= 1"):
        StreamBatches(torch.arange(10), 2, 0)
