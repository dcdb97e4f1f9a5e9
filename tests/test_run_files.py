"""Run files: strict JSON, reproducible npz, and the one reader's one-line messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lr_jax.experiment.run_files import (
    RunFileError,
    json_safe,
    read_json,
    read_metrics,
    read_npz,
    read_yaml,
    write_json,
    write_metrics,
    write_npz,
    write_yaml,
)


def test_metrics_are_strict_json_with_null_for_non_finite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, [{"epoch": 0, "category": "train", "train_loss": math.nan, "x": [1.0, math.inf], "diverged": True}])
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text, parse_constant=lambda t: pytest.fail(f"non-standard token {t}"))
    assert row == {"epoch": 0, "category": "train", "train_loss": None, "x": [1.0, None], "diverged": True}
    assert read_metrics(path) == [row]
    assert json_safe({"a": (-math.inf, 2)}) == {"a": [None, 2]}


def test_reader_refuses_nan_tokens_and_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0, "category": "train"}\n{"epoch": 2, "category": "train", "train_loss": NaN}\n')
    with pytest.raises(RunFileError, match=rf"^{path}: metrics is damaged \(line 2: non-standard JSON token NaN\); delete"):
        read_metrics(path)


@pytest.mark.parametrize(
    "content, reason",
    [(b'{"epoch": 0, "category": "train"', "line 1: "), (b"\0\0\0\0", "line 1: "), (b'[1, 2]\n', "line 1 is not a row")],
)
def test_damaged_metrics_give_one_line(tmp_path, content, reason):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    with pytest.raises(RunFileError) as err:
        read_metrics(path, fix="do this")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: metrics is damaged (") and reason in message
    assert message.endswith("; do this.")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RunFileError, match=rf"^{tmp_path / 'status.json'}: run status is missing; "):
        read_json(tmp_path / "status.json", what="run status")


def test_npz_bytes_do_not_depend_on_time_or_order(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([0, 2], np.int64)}
    write_npz(tmp_path / "one.npz", arrays)
    write_npz(tmp_path / "two.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    back = read_npz(tmp_path / "one.npz")
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["b"], arrays["b"])
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_damaged_npz_gives_one_line(tmp_path, cut):
    path = tmp_path / "bounds.npz"
    write_npz(path, {"x": np.zeros((100, 100))})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(RunFileError, match=rf"^{path}: per-point bounds is damaged \("):
        read_npz(path)


def test_json_and_yaml_round_trip_and_damage(tmp_path):
    write_json(tmp_path / "s.json", {"status": "running", "epoch": None})
    assert read_json(tmp_path / "s.json") == {"status": "running", "epoch": None}
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"x": math.nan})  # strict: refuse rather than write NaN
    write_yaml(tmp_path / "c.yaml", {"data": {"scale": 64.0}, "lr": 0.02})
    assert read_yaml(tmp_path / "c.yaml") == {"data": {"scale": 64.0}, "lr": 0.02}
    (tmp_path / "c.yaml").write_text("")
    with pytest.raises(RunFileError, match="config is damaged \\(empty file\\)"):
        read_yaml(tmp_path / "c.yaml")
