"""The payload log's records and files: redaction before a record exists, rotation by size, files kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kubeforge.api.modeldeployment import PayloadLog
from kubeforge.serving.payloads import REDACTED, PayloadLogger, Sample, record


def sample(settings: PayloadLog, rebuilt: tuple[bytes, int | None] | None = None) -> Sample:
    ssn = np.array([b"123-45-6789", b"987-65-4321"], dtype=object)
    packed = b"".join(len(v).to_bytes(4, "little") + v for v in ssn)
    scores = np.array([[0.5, 1.5], [2.5, 3.5]], dtype=np.float32)
    inputs = [
        {"name": "ssn", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(packed)}},
        {"name": "scores", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": scores.nbytes}},
        {"name": "region", "datatype": "BYTES", "shape": [2], "data": ["north", "south"]},
    ]
    header = json.dumps({"id": "r-1", "inputs": inputs}).encode()
    output = {"name": "outputs", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5]}
    answer = json.dumps({"outputs": [output]}).encode()
    return Sample(
        settings, "clf", "3", "canary", "r-1", 1767225600.25, 0.0042, (header + packed + scores.tobytes(), len(header)),
        rebuilt, (answer, None),
    )  # fmt: skip


def test_a_record_names_redacted_inputs_and_carries_the_rest() -> None:
    written = record(sample(PayloadLog(redact=["ssn"])))

    assert written == {
        "requestId": "r-1",
        "time": "2026-01-01T00:00:00.250Z",
        "model": "clf",
        "version": "3",
        "role": "canary",
        "inputs": {"ssn": REDACTED, "scores": [[0.5, 1.5], [2.5, 3.5]], "region": ["north", "south"]},
        "outputs": {"outputs": [[0.25, 0.75], [0.5, 0.5]]},
        "latencyMs": 4.2,
    }
    assert "123-45" not in json.dumps(written)


def test_binary_strings_are_written_as_text() -> None:
    line = PayloadLogger.line(sample(PayloadLog()))

    assert json.loads(line)["inputs"]["ssn"] == ["123-45-6789", "987-65-4321"]


def test_features_read_from_the_online_store_are_recorded_next_to_the_callers_keys() -> None:
    features = np.array([[1.0, 2.0]], dtype=np.float32)
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    header = json.dumps({"inputs": [tensor]}).encode()

    written = record(sample(PayloadLog(redact=["ssn"]), (header + features.tobytes(), len(header))))

    assert written["inputs"]["features"] == [[1.0, 2.0]]
    assert written["inputs"]["region"] == ["north", "south"]


def test_files_rotate_at_their_size_and_only_max_files_old_ones_stay(tmp_path: Path) -> None:
    settings = PayloadLog(max_file_mb=1, max_files=2)
    per_file = (1024 * 1024) // len(PayloadLogger.line(sample(settings)))
    logger = PayloadLogger(tmp_path)

    for _ in range(4):  # four files' worth: the oldest has gone by the end
        logger._write([sample(settings)] * per_file)
    logger.close()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["clf.jsonl", "clf.jsonl.1", "clf.jsonl.2"]
    for path in tmp_path.iterdir():
        lines = path.read_text().splitlines()
        assert len(lines) == per_file and path.stat().st_size <= 1024 * 1024
        assert json.loads(lines[0])["requestId"] == "r-1"
