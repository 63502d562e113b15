import http.client
import json

import pytest

from carousel.web.server import MAX_BODY_BYTES, MAX_POINTS


def request(server, method, path, body=None, headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, (json.loads(data) if ctype.startswith("application/json") else data)


WORD = {
    "strokes": [[[10, 100, 0], [20, 80, 10], [30, 100, 20], [40, 80, 30]], [[50, 60], [55, 60]]]
}


def test_pages_are_served(server):
    status, body = request(server, "GET", "/")
    assert status == 200 and b'id="pad"' in body
    status, body = request(server, "GET", "/static/app.js")
    assert status == 200 and b"/api/recognize" in body
    assert request(server, "GET", "/static/../server.py")[0] == 404
    assert request(server, "GET", "/static/index.html")[0] == 404


def test_recognize_returns_text_and_the_four_rows(server):
    status, r = request(server, "POST", "/api/recognize", WORD)
    assert status == 200
    assert isinstance(r["text"], str)
    T = r["frames"]
    assert len(r["char_probs"]) == T and len(r["cells"]) == T
    assert len(r["points"]) > 0 and len(r["gradients"]) == len(r["chars"])
    for g in r["gradients"]:
        assert len(g["dx"]) == len(r["points"])
    status, r = request(server, "POST", "/api/recognize", {"strokes": []})
    assert status == 200 and r["text"] == ""


def test_export_gives_a_pen_document(server):
    from carousel.handwriting.pen import parse_pen_json

    status, doc = request(server, "POST", "/api/export", {**WORD, "text": "hi"})
    assert status == 200
    (sample,) = parse_pen_json(doc)
    assert sample.text == "hi" and len(sample.strokes) == 2
    assert sample.strokes[0][0, 1] == -100  # saved y down, read back y up


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "match"),
    [
        ("POST", "/api/recognize", "{not json", None, 400, "not JSON"),
        ("POST", "/api/recognize", [1, 2], None, 400, "expected a JSON object"),
        ("POST", "/api/recognize", {"points": []}, None, 400, "missing 'strokes'"),
        ("POST", "/api/recognize", {"strokes": [[[0, "x"]]]}, None, 400, "point 0 of stroke 0"),
        (
            "POST",
            "/api/recognize",
            {"strokes": [[[0, 0]] * (MAX_POINTS + 1)]},
            None,
            413,
            "at most",
        ),
        ("POST", "/api/recognize", {"strokes": [[[0, 0]]] * 501}, None, 413, "at most 500 strokes"),
        ("POST", "/api/recognize", WORD, {"Content-Type": "text/plain"}, 415, "application/json"),
        ("POST", "/api/export", {**WORD, "text": 5}, None, 400, "'text' must be a string"),
        ("POST", "/api/nope", WORD, None, 404, "no such endpoint"),
        ("PUT", "/api/recognize", WORD, None, 405, "use GET or POST"),
        ("GET", "/nope", None, None, 404, "no such page"),
    ],
)
def test_bad_requests_get_clear_4xx_and_the_server_lives_on(
    server, method, path, body, headers, status, match
):
    got, r = request(server, method, path, body, headers)
    assert got == status
    assert match in r["error"]
    assert request(server, "POST", "/api/recognize", WORD)[0] == 200


def test_oversized_body_is_refused_without_reading_it(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/api/recognize")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and b"at most" in r.read()
    conn.close()
    assert request(server, "POST", "/api/recognize", WORD)[0] == 200


def test_model_failure_is_a_500_not_a_crash(server, app, monkeypatch):
    def boom(body):
        raise RuntimeError("boom")

    monkeypatch.setattr(app, "recognize", boom)
    # the route table binds app.recognize at request time
    status, r = request(server, "POST", "/api/recognize", WORD)
    assert status == 500 and "internal error" in r["error"]
    monkeypatch.undo()
    assert request(server, "POST", "/api/recognize", WORD)[0] == 200


def test_beam_search_with_a_character_lm_reads_consistently(app):
    from carousel.ctc import NGramCharScorer
    from carousel.tasks.handwriting import ALPHABET
    from carousel.web import HandwritingApp

    lm = NGramCharScorer(len(ALPHABET), order=3).fit(
        [ALPHABET.encode(w) for w in ("hand", "writing", "word")]
    )
    beam = HandwritingApp(app.model, app.meta, beam_width=4, scorer=lm, lm_weight=0.5)
    r = beam.recognize(WORD)
    assert "".join(c["char"] for c in r["chars"]) == r["text"]
    assert len(r["gradients"]) == len(r["chars"])
    frames = [c["frame"] for c in r["chars"]]
    assert frames == sorted(frames) and all(0 <= f < r["frames"] for f in frames)
    greedy = HandwritingApp(app.model, app.meta, beam_width=0).recognize(WORD)
    assert greedy["text"] == app.recognize(WORD)["text"]
