import threading

import pytest

pytest.importorskip("HersheyFonts")


@pytest.fixture(scope="module")
def app():
    import torch

    from carousel.handwriting.recognizer import RecognizerTrainConfig, _model_from
    from carousel.web import HandwritingApp

    torch.manual_seed(0)
    model = _model_from(RecognizerTrainConfig(hidden_size=16, num_layers=1, frontend_size=8))
    return HandwritingApp(model, {"config": {"data": {"spacing": 0.2}}})


@pytest.fixture(scope="module")
def server(app):
    from carousel.web import make_server

    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)
