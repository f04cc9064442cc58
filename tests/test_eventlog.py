"""The event log's failure paths: a dead writer, a full queue, bad records and I/O errors never
block the request path or `close`, and every refused record is counted."""
from __future__ import annotations

import threading
import time


from pipeline.serving.eventlog import EventLog, read_events


def test_records_are_written_in_order_and_counted(tmp_path):
    log = EventLog(tmp_path, "t")
    for i in range(50):
        assert log.write({"i": i})
    log.close()
    assert [r["i"] for r in read_events(tmp_path, "t")] == list(range(50))
    assert (log.written, log.dropped, log.failed) == (50, 0, 0)


def test_a_record_the_disk_refuses_is_counted_and_the_writer_goes_on(tmp_path, monkeypatch):
    log = EventLog(tmp_path, "t")
    real = log._write_batch
    calls = {"n": 0}

    class Refusing:
        """A file whose second write fails with an I/O error (disk full)."""

        def __init__(self, inner):
            self.inner = inner

        def write(self, text):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            return self.inner.write(text)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(log, "_write_batch", lambda out, batch: real(out if isinstance(out, Refusing) else Refusing(out), batch))
    for i in range(3):
        log.write({"i": i})
        time.sleep(0.05)
    log.close()
    assert [r["i"] for r in read_events(tmp_path, "t")] == [0, 2]
    assert (log.written, log.failed) == (2, 1)


def test_a_dead_writer_drops_and_counts_and_close_returns(tmp_path, monkeypatch):
    log = EventLog(tmp_path, "t", queue_size=4)

    def crash(out, batch):
        raise RuntimeError("writer bug")

    monkeypatch.setattr(log, "_write_batch", crash)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the crash is the point here
    log.write({"i": 0})
    log._thread.join(2.0)
    assert not log._thread.is_alive()
    accepted = [log.write({"i": i}) for i in range(1, 11)]
    assert not any(accepted) and log.dropped == 10
    t = time.perf_counter()
    log.close(timeout=0.5)
    assert time.perf_counter() - t < 30.0  # a hang guard, not a speed bound: it used to block forever


def test_close_with_a_full_queue_and_a_stuck_writer_returns_within_its_timeout(tmp_path, monkeypatch):
    log = EventLog(tmp_path, "t", queue_size=2)
    gate = threading.Event()
    real = log._write_batch
    monkeypatch.setattr(log, "_write_batch", lambda out, batch: (gate.wait(), real(out, batch))[1])
    log.write({"i": 0})
    time.sleep(0.05)  # the writer holds record 0 and waits
    assert log.write({"i": 1}) and log.write({"i": 2}) and not log.write({"i": 3})
    assert log.dropped == 1
    t = time.perf_counter()
    log.close(timeout=0.3)
    assert time.perf_counter() - t < 30.0  # a hang guard (the writer stays stuck)
    gate.set()


def test_writes_after_close_are_dropped_not_restarted(tmp_path):
    log = EventLog(tmp_path, "t")
    log.write({"i": 0})
    log.close()
    assert log.write({"i": 1}) is False and log.dropped == 1 and log._thread is None


def test_an_unwritable_folder_counts_records_as_dropped(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    log = EventLog(blocker / "logs", "t")
    assert log.write({"i": 0}) is False and log.dropped == 1
    log.close()


def test_dropped_feedback_is_reported_in_metrics(tmp_path):
    from tests.test_serving_service import _service
    from tests.test_serving_support import tiny_run

    service, _, client, _ = _service(tiny_run(tmp_path / "run"), tmp_path)
    service.state.feedback_log.close()  # a closed log refuses: those records are dropped
    r = client.post("/feedback", json={"request_id": "r", "item_id": "i1"})
    assert r.status_code == 202 and r.json() == {"accepted": False}
    assert 'hybridrec_eventlog_dropped{log="feedback"} 1.0' in client.get("/metrics").text
    service.state.served_log.close()


def test_read_events_from_files_folders_and_prefixes_skips_bad_lines(tmp_path, caplog):
    import logging

    (tmp_path / "served-a-0001.jsonl").write_text('{"n": 1, "name": "café"}\nnot json\n\n{"n": 2}\n', encoding="utf-8")
    (tmp_path / "feedback-a-0001.jsonl").write_text('{"n": 3}\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="pipeline.serving.eventlog"):
        served = list(read_events(tmp_path, "served"))
    assert served == [{"n": 1, "name": "café"}, {"n": 2}]
    assert f"{tmp_path / 'served-a-0001.jsonl'}:2: not JSON, skipped" in [r.getMessage() for r in caplog.records]
    assert sorted(r["n"] for r in read_events(tmp_path)) == [1, 2, 3]  # no prefix: every log
    assert [r["n"] for r in read_events(tmp_path / "feedback-a-0001.jsonl")] == [3]  # one file
    assert [r["n"] for r in read_events([tmp_path / "feedback-a-0001.jsonl", tmp_path / "served-a-0001.jsonl"])] == [3, 1, 2]


def test_file_names_rotation_and_compact_lines(tmp_path):
    import os
    import re
    import socket

    log = EventLog(tmp_path / "a" / "b", "t", rotate_bytes=60)  # the folder and its parents are created
    for i in range(6):
        log.write({"i": i, "pad": "x" * 20})
    log.close()
    names = [p.name for p in log.files()]
    stem = re.escape(f"t-{socket.gethostname()}-{os.getpid()}-")
    assert all(re.fullmatch(stem + r"\d{8}T\d{6}-\d{4}\.jsonl", n) for n in names), names
    assert [n[-10:-6] for n in names] == ["0000", "0001", "0002", "0003"]  # 2 records a file; the last one opened empty
    first = (log.files()[0]).read_text(encoding="utf-8").splitlines()
    assert first == ['{"i":0,"pad":"xxxxxxxxxxxxxxxxxxxx"}', '{"i":1,"pad":"xxxxxxxxxxxxxxxxxxxx"}']


def test_failed_and_dropped_count_every_record_and_say_why(tmp_path, caplog):
    import logging

    log = EventLog(tmp_path, "t")
    with caplog.at_level(logging.WARNING, logger="pipeline.serving.eventlog"):
        log.write({(1, 2): "tuple keys are not JSON"})
        log.write({(3, 4): "nor this one"})
        log.write({"ok": 1})
        log.close()
    assert (log.written, log.failed) == (1, 2)
    assert sum(r.getMessage().startswith("event log t: record not written: ") for r in caplog.records) == 2
    log.write({"late": 1})
    log.write({"late": 2})
    assert log.dropped == 2


def test_an_unwritable_folder_is_reported(tmp_path, caplog):
    import logging

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="pipeline.serving.eventlog"):
        EventLog(blocker / "logs", "t").write({"i": 0})
    assert any(r.getMessage().startswith(f"event log t: cannot create {blocker / 'logs'}: ") for r in caplog.records)
