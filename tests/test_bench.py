import bench


def test_generate_benchmark_prints_both_paths(capsys):
    bench.main(["generate", "--model", "tiny", "--tokens", "8", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "KV cache" in out and "cache-free" in out and "speed-up" in out


def test_data_benchmark_runs_on_the_bundled_corpus(capsys):
    bench.main(["data", "--copies", "1", "--workers", "1", "--batch-size", "2", "--seq-len", "64"])
    out = capsys.readouterr().out
    assert "single-thread encode_ordinary" in out and "ms/batch" in out
