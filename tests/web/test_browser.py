"""End to end: a real headless Chromium (Debian's ``chromium``) draws a word on the page with
the mouse, and the page shows what the server read. Skipped when Chromium or Playwright is
absent (CI installs both: .ci/run and the ``dev`` extra)."""

import json
import os
import shutil

import numpy as np
import pytest

CHROMIUM = os.environ.get("CAROUSEL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="needs chromium (apt-get install chromium)"
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip)")

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


from carousel.handwriting.pen import read_pen_json  # noqa: E402


def word_on_canvas(word="mini", width=900, height=260):
    """A synthetic word as canvas strokes (y down), scaled into the writing pad."""
    from carousel.handwriting.synth import WriterStyle, write_word

    strokes = write_word(word, "cursive", WriterStyle(size=1.0), np.random.default_rng(0))
    pts = np.concatenate(strokes)
    scale = min((width - 100) / np.ptp(pts[:, 0]), (height - 60) / np.ptp(pts[:, 1]), 90)
    return [
        [(50 + (s[i, 0] - pts[:, 0].min()) * scale, 170 - s[i, 1] * scale) for i in range(len(s))]
        for s in strokes
    ]


def test_writing_in_the_page_shows_the_recognised_text(server, app, tmp_path):
    host, port = server.server_address[:2]
    sent = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1100})
            page.on(
                "request",
                lambda r: sent.append(r.post_data) if r.url.endswith("/api/recognize") else None,
            )
            page.goto(f"http://{host}:{port}/", wait_until="load")
            box = page.locator("#pad").bounding_box()
            for stroke in word_on_canvas():
                page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
                page.mouse.down()
                for x, y in stroke[1:]:
                    page.mouse.move(box["x"] + x, box["y"] + y)
                page.mouse.up()
            # every stroke's end sends the strokes; the page shows the server's reading of
            # the strokes it sent last
            page.wait_for_function(
                "document.getElementById('text').dataset.requests >= 1", timeout=60_000
            )
            page.wait_for_timeout(1000)
            last = json.loads(sent[-1])
            assert len(last["strokes"]) == len(word_on_canvas())
            expected = app.recognize(last)["text"]
            page.wait_for_function(
                "t => document.getElementById('text').textContent === t",
                arg=expected,
                timeout=60_000,
            )
            assert page.locator("#text").inner_text() == expected
            inked = page.evaluate(
                """id => { const c = document.getElementById(id);
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""",
                "row-writing",
            )
            assert inked > 100
            # the four rows are drawn, and the picture can be looked at
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert (tmp_path / "page.png").stat().st_size > 10_000
            assert page.locator("#status").inner_text() == ""
            page.click("#animate")
            page.wait_for_timeout(300)
            page.fill("#label", "mini")
            with page.expect_download() as download:
                page.click("#save")
            saved = tmp_path / "saved.json"
            download.value.save_as(str(saved))
            (sample,) = read_pen_json(saved)
            assert sample.text == "mini" and len(sample.strokes) == len(last["strokes"])
            page.click("#clear")
            assert page.locator("#text").inner_text() == ""
        finally:
            browser.close()
