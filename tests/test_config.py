"""Settings precedence: flag > environment > qfserve.toml in the data dir > default."""

from qfserve.config import load_settings


def test_precedence(tmp_path, monkeypatch):
    (tmp_path / "qfserve.toml").write_text("port = 9001\nparallel = 3\nqueue_size = 7\n")
    monkeypatch.setenv("QFSERVE_PARALLEL", "5")
    monkeypatch.setenv("QFSERVE_QUEUE_SIZE", "9")
    settings = load_settings(data_dir=tmp_path, queue_size=11, port=None)
    assert settings.port == 9001  # file
    assert settings.parallel == 5  # env beats file
    assert settings.queue_size == 11  # flag beats env
    # defaults: a region per sequence holding an 8K profile's input and output
    assert settings.ctx_per_seq == 0 and settings.seq_limit == 9216 and settings.kv_pool_cells == 5 * 9216


def test_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.delenv("QFSERVE_PORT", raising=False)
    settings = load_settings(data_dir=tmp_path)
    assert (settings.host, settings.port, settings.threads >= 1) == ("127.0.0.1", 8360, True)
