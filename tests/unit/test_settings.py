from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def toml(tmp_path):
    path = tmp_path / "conf.toml"
    path.write_text('[model]\npath = "from-toml"\nmax_model_len = 512\ndtype = "float16"\n[chunk]\ntokens = 300\n')
    return path


def test_precedence_is_kwargs_cli_env_toml_defaults(toml, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_MODEL__MAX_MODEL_LEN", "400")
    monkeypatch.setenv("EMBEDPIPE_CHUNK__TOKENS", "100")
    settings = load_settings(toml, ["--max-model-len", "450"], run={"actors": 3})
    assert settings.model.path == "from-toml"  # toml
    assert settings.model.dtype == "float16"  # toml over default
    assert settings.chunk.tokens == 100  # env over toml
    assert settings.model.max_model_len == 450  # cli over env
    assert settings.run.actors == 3  # kwargs
    assert settings.model.max_num_batched_tokens == 8192  # default


def test_cli_names_map_onto_the_settings_fields(toml):
    s = load_settings(
        toml,
        [
            "--inputs",
            "a.jsonl,b/",
            "--db",
            "/tmp/x",
            "--chunk-overlap-tokens",
            "20",
            "--max-num-batched-tokens",
            "16384",
            "--model.enforce-eager",
            "true",  # unset is a third value (eager on CPU only), so the flag takes one
        ],
    )
    assert s.input.paths == ["a.jsonl", "b/"]
    assert (s.store.uri, s.chunk.overlap_tokens, s.model.max_num_batched_tokens) == ("/tmp/x", 20, 16384)
    assert s.model.enforce_eager is True


def test_invalid_values_are_named_with_their_fix(toml):
    with pytest.raises(ConfigError) as err:
        load_settings(toml, ["--model.gpu-memory-utilization", "1.5", "--dtype", "fp8"])
    text = str(err.value)
    assert "model.gpu_memory_utilization = '1.5'" in text and "EMBEDPIPE_MODEL__GPU_MEMORY_UTILIZATION" in text
    assert "model.dtype = 'fp8'" in text


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\npath = "m"\nmax_model_length = 10\n')
    with pytest.raises(ConfigError, match=f"model.max_model_length: not a setting of this job; remove it from {path}"):
        load_settings(path)
    with pytest.raises(ConfigError, match="bench: not a setting of this job"):  # the benchmark's section only
        load_settings("conf/bench.toml")


def test_missing_model_and_missing_file_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path: Field required"):
        load_settings()
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_overlap_over_half_the_chunk_is_refused(toml):
    with pytest.raises(ConfigError, match="at most 150"):
        load_settings(toml, ["--chunk-overlap-tokens", "200"])


def test_shipped_configs_load_and_plan_where_their_model_is_here(monkeypatch):
    from pathlib import Path

    from pipeline.plan.job import plan_lengths

    planned = []
    from benchmarks.settings import BenchJobSettings

    for conf in sorted(Path("conf").glob("*.toml")):
        settings = load_settings(conf, settings_cls=BenchJobSettings if conf.name == "bench.toml" else None)
        if settings.model.path.startswith("package:"):  # the packaged model: planned here as on the cluster
            planned.append(plan_lengths(settings).max_model_len)
        else:  # a GPU model the cluster's image holds at an absolute path
            assert Path(settings.model.path).is_absolute(), conf
    assert len(planned) >= 3 and all(n > 1 for n in planned)


def test_store_credentials_never_appear_in_dumps_or_logs(toml, capsys):
    from pipeline.log import configure_logging

    secret = '{"aws_secret_access_key": "s3cr3t-value"}'
    s = load_settings(toml, ["--store.storage-options", secret, "--input.storage-options", secret])
    assert s.store.storage_options["aws_secret_access_key"].get_secret_value() == "s3cr3t-value"
    assert s.input.storage_options["aws_secret_access_key"].get_secret_value() == "s3cr3t-value"
    dumped = s.model_dump_json()
    assert "s3cr3t-value" not in dumped and "**********" in dumped
    configure_logging("INFO", json_format=True)
    import structlog

    structlog.get_logger("t").info("settings_resolved", settings=s.model_dump(mode="json"))
    assert "s3cr3t-value" not in capsys.readouterr().err
