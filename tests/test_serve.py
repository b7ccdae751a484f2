"""``emotrain serve``: a real server process on a loopback port (one, shared by most tests, stopped by SIGTERM in
the last test), against ``emotrain predict`` (records, and ``--media`` recordings) on the same input; its limits and
faults; the page in Debian's headless Chromium. The stand-in system of the predict tests is the bundle."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from corpus import make_corpus, make_shards
from emotrain.cli import main
from emotrain.data.splits import SplitRecipe
from emotrain.inference.outputs import read_predictions
from predict_system import REPO, make_system
from serve_util import ServerProcess, post_form, record_parts, request

TOL = 1e-5
QUEUE = 16
ARTIFACTS = Path(os.environ.get("EMOTRAIN_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    corpus = make_corpus(root / "corpus", conversations=20, seed=5)
    shards = root / "shards" / "p"
    make_shards(corpus, shards, recipe=SplitRecipe(0.3, 0.3, seed=0), shard_mb=100.0, max_per_shard=3)
    records = json.loads((corpus / "train.json").read_text())
    return {"root": root, "corpus": corpus, "records": records, **make_system(root / "sys", shards)}


@pytest.fixture(scope="module")
def server(system, tmp_path_factory):
    """The shared server: a queue of 16, batches of up to 8 waiting 50 ms, small upload and media limits, its
    temporary files in a folder of its own (to see that uploads are deleted)."""
    tmp = tmp_path_factory.mktemp("server_tmp")
    proc = ServerProcess(system["bundle"], tmp.parent / "server.log", "--queue", str(QUEUE), "--max-batch", "8",
                         "--batch-timeout-ms", "50", "--max-upload-mb", "2", "--max-media-s", "30",
                         env={"TMPDIR": str(tmp)})
    proc.tmp = tmp
    proc.wait_ready()
    yield proc
    proc.stop()


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


def assert_rows_equal(got: dict, want: dict, classes: list[str]) -> None:
    assert (got["label"], got["path"], got["present"]) == (want["label"], want["path"], want["present"]), got["key"]
    assert set(got["probs"]) == set(want["probs"])
    for system_name in want["probs"]:
        a = np.array([got["probs"][system_name][c] for c in classes])
        b = np.array([want["probs"][system_name][c] for c in classes])
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL, err_msg=(got["key"], system_name))


@pytest.mark.slow
def test_concurrent_records_equal_emotrain_predict_whatever_their_batch(system, server, tmp_path):
    out = tmp_path / "predict"
    assert main(["predict", str(system["bundle"]), "--avamerg", str(system["corpus"]), "--json", "train.json",
                 "--out", str(out), "--no-progress"]) == 0
    want = by_key(read_predictions(out / "predictions.jsonl"))
    records = system["records"][:10]
    with ThreadPoolExecutor(len(records)) as pool:  # concurrent: their turns share forward passes
        replies = list(pool.map(lambda r: post_form(server.port, "/v1/predict/record",
                                                    record_parts(system["corpus"], r)), records))
    classes = replies[0].json()["classes"]
    compared = 0
    for record, reply in zip(records, replies):
        assert reply.status == 200, reply.body
        rows = reply.json()["turns"]
        assert [r["key"] for r in rows] == sorted(k for k in want if k.rsplit("_", 1)[0] == record["conversation_id"])
        for row in rows:
            assert_rows_equal(row, want[row["key"]], classes)
            compared += 1
    assert compared >= 20
    metrics = request(server.port, "GET", "/metrics").body.decode()
    batches = float(re.search(r"^emotrain_batch_requests_count (\S+)$", metrics, re.M)[1])
    batched = float(re.search(r"^emotrain_batch_requests_sum (\S+)$", metrics, re.M)[1])
    assert batched >= len(records) and batches < batched, "no batch held two requests"


@pytest.mark.slow
def test_the_worker_gives_the_same_rows_in_any_batch(system, tmp_path):
    """The inference worker's own path in this process: the same records scored with forward passes of 1, 3 and
    16 turns, and mixed with a bad request, give predict_conversation's rows (and the bad one its own 422)."""
    from emotrain.inference.predict import Predictor
    from emotrain.serve.worker import RECORD, BundleAPI, Failure

    records = system["records"][:5]
    predictor = Predictor.load(system["bundle"])
    want = {t.key: t.row(predictor.classes) for r in records
            for t in predictor.predict_conversation(r, system["corpus"]).turns}
    payloads = []
    for r in records:
        clips = {}
        for _, name, data in record_parts(system["corpus"], r)[1:]:
            (tmp_path / name).write_bytes(data)
            clips[name] = str(tmp_path / name)
        payloads.append({"kind": RECORD, "record": r, "clips": clips})
    bad = {"kind": RECORD, "record": {"conversation_id": "x", "turns": "no"}, "clips": {}}
    for max_batch in (1, 3, 16):
        api = BundleAPI(str(system["bundle"]), max_batch, 0.0, "/x")
        api.predictor = predictor
        decoded = [api.decode_request(p) for p in payloads[:2] + [bad] + payloads[2:]]
        assert isinstance(decoded[2], Failure) and decoded[2].status == 422
        out = api.predict(decoded)
        assert out[2] == {"ok": False, "status": 422, "error": "conversation 'x': turns should be list, got str"}
        rows = [row for answer in out[:2] + out[3:] for row in answer["turns"]]
        assert sorted(r["key"] for r in rows) == sorted(want)
        for row in rows:
            assert_rows_equal(row, want[row["key"]], predictor.classes)
        assert out[0]["batch"]["requests"] == len(records)


def media_parts(corpus: Path, record: dict, text: str) -> list[tuple[str, str | None, bytes]]:
    cid = record["conversation_id"]
    mp4 = next((corpus / "video_v5_0").glob(f"dia{cid}utt0_*.mp4"))
    wav = next((corpus / "audio_v5_0").glob(f"dia{cid}utt0_*.wav"))
    return [("media", mp4.name, mp4.read_bytes()), ("audio", wav.name, wav.read_bytes()), ("transcript", None, text.encode()),
            ("explain", None, b"true")]


@pytest.mark.slow
def test_a_recording_equals_emotrain_predict_media_on_the_same_files(system, server, tmp_path):
    record = system["records"][0]
    text = record["turns"][0]["dialogue_history"][0]["utterance"]
    reply = post_form(server.port, "/v1/predict/media", media_parts(system["corpus"], record, text))
    assert reply.status == 200, reply.body
    answer = reply.json()
    cid = record["conversation_id"]
    mp4 = next((system["corpus"] / "video_v5_0").glob(f"dia{cid}utt0_*.mp4"))
    wav = next((system["corpus"] / "audio_v5_0").glob(f"dia{cid}utt0_*.wav"))
    (tmp_path / "t.txt").write_text(text)
    assert main(["predict", str(system["bundle"]), "--media", str(mp4), "--audio", str(wav), "--transcript",
                 str(tmp_path / "t.txt"), "--explain", "--no-plot", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    want = read_predictions(tmp_path / "out" / "predictions.jsonl")
    assert len(answer["turns"]) == len(want) == 1
    got = answer["turns"][0]
    for field in ("text", "start", "end", "speaker", "utterance", "turn_id"):
        assert got[field] == want[0][field], field
    assert_rows_equal({**got, "key": want[0]["key"]}, want[0], answer["classes"])
    assert got["explanation"]["fusion_share"] == pytest.approx(want[0]["explanation"]["fusion_share"], abs=TOL)
    assert str(server.tmp) not in reply.body.decode()  # no server path in the answer


@pytest.mark.slow
def test_health_info_metrics_and_openapi(system, server):
    assert request(server.port, "GET", "/health").status == 200
    info = request(server.port, "GET", "/v1/info").json()
    bundle_json = json.loads((system["bundle"] / "bundle.json").read_text())
    assert info["classes"] == bundle_json["classes"] and info["bundle"]["classes"] == bundle_json["classes"]
    assert info["bundle"]["fusion"]["strategy"] == bundle_json["fusion"]["strategy"]
    assert info["limits"]["queue"] == QUEUE and info["limits"]["max_upload_bytes"] == 2 * 2**20 and not info["auth"]
    metrics = request(server.port, "GET", "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    for name in ("emotrain_requests_total", "emotrain_request_seconds_bucket", "emotrain_queue_depth",
                 "emotrain_batch_requests_bucket", "emotrain_batch_turns_bucket", "emotrain_model_seconds_bucket"):
        assert re.search(rf"^{name}\b", text, re.M), name
    spec = request(server.port, "GET", "/openapi.json").json()
    for path in ("/v1/predict/record", "/v1/predict/media"):
        post = spec["paths"][path]["post"]
        body = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        assert {"413", "415", "422", "503", "504"} <= set(post["responses"])
        assert ("record" in body) if path.endswith("record") else ({"media", "audio", "transcript"} <= set(body))
    assert "/v1/info" in spec["paths"] and "/metrics" in spec["paths"]
    # LitServe's generic route is not there: only the checked routes feed the workers
    assert request(server.port, "POST", "/v1/_batched", b"{}", {"Content-Type": "application/json"}).status in (404, 405)
    page = request(server.port, "GET", "/")
    assert page.status == 200 and b"<form" in page.body and not re.search(rb"src=\"https?://|href=\"https?://", page.body)


def _truncated_mp4(corpus: Path, record: dict) -> tuple[str, bytes]:
    mp4 = next((corpus / "video_v5_0").glob(f"dia{record['conversation_id']}utt0_*.mp4"))
    data = mp4.read_bytes()
    return mp4.name, data[: len(data) // 2]


FAULTS = {
    "oversize upload": (lambda c, r: [("media", "big.mp4", os.urandom(3 * 2**20))], "/v1/predict/media", 413, "limit"),
    "truncated mp4": (lambda c, r: [("record", None, json.dumps(r).encode()), ("clips", *_truncated_mp4(c, r))],
                      "/v1/predict/record", 422, "mp4"),
    "text file renamed .mp4": (lambda c, r: [("media", "talk.mp4", b"just some text, not a video\n" * 20),
                                             ("transcript", None, b"hello")], "/v1/predict/media", 422, "talk.mp4"),
    "non-UTF-8 transcript": (lambda c, r: media_parts(c, r, "x")[:2] + [("transcript", "t.srt", "caf\xe9".encode("latin-1"))],
                             "/v1/predict/media", 400, "not UTF-8"),
    "record not JSON": (lambda c, r: [("record", None, b"{not json")], "/v1/predict/record", 400, "not JSON"),
    "bad clip name": (lambda c, r: [("record", None, json.dumps(r).encode()), ("clips", "../../etc/passwd.wav", b"RIFF")],
                      "/v1/predict/record", 422, "does not follow"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_upload_is_one_json_line_and_the_server_stays_up(system, server, fault):
    build, path, status, words = FAULTS[fault]
    reply = post_form(server.port, path, build(system["corpus"], system["records"][1]))
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in error
    assert str(server.tmp) not in error
    assert request(server.port, "GET", "/health").status == 200


@pytest.mark.slow
def test_an_empty_body_and_a_wrong_content_type_are_refused(server):
    empty = request(server.port, "POST", "/v1/predict/record", b"", {"Content-Type": "multipart/form-data; boundary=x"})
    assert empty.status == 400 and empty.json() == {"error": "empty request body"}
    wrong = request(server.port, "POST", "/v1/predict/record", b'{"record": {}}', {"Content-Type": "application/json"})
    assert wrong.status == 415 and "multipart/form-data" in wrong.json()["error"]


@pytest.mark.slow
def test_uploads_are_deleted_and_client_names_never_become_paths(system, server, tmp_path):
    record = system["records"][2]
    parts = media_parts(system["corpus"], record, "hello there")
    evil = Path("/tmp/emotrain-serve-evil-28.mp4")
    parts[0] = ("media", f"../../../..{evil}", parts[0][2])
    reply = post_form(server.port, "/v1/predict/media", parts)
    assert reply.status == 200, reply.body
    assert not evil.exists()
    assert list(server.tmp.glob("emotrain-serve-*")) == []  # every request's folder deleted (good and bad ones above)


@pytest.mark.slow
def test_64_concurrent_requests_against_a_queue_of_16_get_200_or_503(system, server):
    records = system["records"]
    bodies = [record_parts(system["corpus"], records[i % len(records)]) for i in range(64)]
    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda p: post_form(server.port, "/v1/predict/record", p, timeout=120), bodies))
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= QUEUE, statuses
    assert all(r.headers.get("retry-after") for r in replies if r.status == 503)
    assert time.monotonic() - started < 120
    assert request(server.port, "GET", "/health").status == 200
    assert post_form(server.port, "/v1/predict/record", bodies[0]).status == 200
    metrics = request(server.port, "GET", "/metrics").body.decode()
    busy = re.search(r'^emotrain_requests_total\{endpoint="/v1/predict/record",outcome="busy"\} (\S+)$', metrics, re.M)
    assert busy and float(busy[1]) == statuses.count(503)


@pytest.mark.slow
def test_a_non_loopback_bind_needs_a_key(system, tmp_path):
    run = [sys.executable, "-m", "emotrain.cli", "serve", str(system["bundle"]), "--host", "0.0.0.0", "--port", "18999"]
    refused = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--api-key-file" in refused.stderr and "Traceback" not in refused.stderr
    (tmp_path / "short").write_text("abc\n")
    short = subprocess.run(run + ["--api-key-file", str(tmp_path / "short")], capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 16 characters" in short.stderr


@pytest.mark.slow
def test_the_key_is_required_and_a_request_past_its_timeout_gets_504(system, tmp_path):
    """A second server: loopback with --api-key-file, and a timeout no prediction can meet."""
    key = "k" * 24
    (tmp_path / "key").write_text(key + "\n")
    proc = ServerProcess(system["bundle"], tmp_path / "log", "--api-key-file", str(tmp_path / "key"), "--timeout-s", "0.01",
                         "--batch-timeout-ms", "0")
    try:
        proc.wait_ready()
        assert request(proc.port, "GET", "/v1/info").status == 401
        assert request(proc.port, "GET", "/metrics", headers={"X-API-Key": "wrong"}).status == 401
        assert request(proc.port, "GET", "/v1/info", headers={"X-API-Key": key}).json()["auth"] is True
        parts = record_parts(system["corpus"], system["records"][0])
        assert post_form(proc.port, "/v1/predict/record", parts).status == 401
        late = post_form(proc.port, "/v1/predict/record", parts, headers={"X-API-Key": key})
        assert late.status == 504 and "0.01 s" in late.json()["error"]
        time.sleep(1.0)  # the worker finishes the abandoned request; the server must not mind
        assert request(proc.port, "GET", "/health").status == 200
        metrics = request(proc.port, "GET", "/metrics", headers={"X-API-Key": key}).body.decode()
        assert re.search(r'outcome="timeout"\} 1\.0$', metrics, re.M)
    finally:
        assert proc.stop() == 0


def test_private_folders():
    from emotrain.serve.uploads import folder_is_private, private_folder, remove_folder

    folder = private_folder()
    try:
        assert folder_is_private(folder) and stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        remove_folder(folder)
    assert not folder.exists()


def test_the_body_is_cut_at_the_limit_while_it_streams(tmp_path):
    from emotrain.serve.uploads import RequestError, read_form
    from serve_util import multipart

    body, content_type = multipart([("media", "a.bin", b"x" * 5000)])

    async def chunks():
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    with pytest.raises(RequestError) as err:  # no Content-Length to trust: counted as it arrives
        asyncio.run(read_form(content_type, chunks(), tmp_path, 3000))
    assert err.value.status == 413
    (tmp_path / "ok").mkdir()
    form = asyncio.run(read_form(content_type, chunks(), tmp_path / "ok", 10_000))
    assert [(p.field, p.filename, p.size, p.path.name) for p in form.files] == [("media", "a.bin", 5000, "part-0")]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
def test_the_page_in_headless_chromium_shows_the_label_and_bars(system, server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        WebDriverWait(driver, 30).until(lambda d: "classes:" in d.find_element(By.ID, "bundle").text)
        record = system["records"][3]
        cid = record["conversation_id"]
        mp4 = next((system["corpus"] / "video_v5_0").glob(f"dia{cid}utt0_*.mp4"))
        wav = next((system["corpus"] / "audio_v5_0").glob(f"dia{cid}utt0_*.wav"))
        text = record["turns"][0]["dialogue_history"][0]["utterance"]
        driver.find_element(By.ID, "media").send_keys(str(mp4))
        driver.find_element(By.ID, "audio").send_keys(str(wav))
        driver.find_element(By.ID, "transcript").send_keys(text)
        driver.find_element(By.ID, "go").click()
        label = WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".turn .label")))
        bars = driver.find_elements(By.CSS_SELECTOR, ".turn .bar")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve_page.png"))
        expected = post_form(server.port, "/v1/predict/media", media_parts(system["corpus"], record, text)).json()
        assert label.text.lower() == expected["turns"][0]["label"]  # shown capitalised
        assert len(bars) == len(expected["classes"]) * len(expected["turns"][0]["probs"])  # every class, every system
        widths = [b.find_element(By.TAG_NAME, "i").get_attribute("style") for b in bars]
        assert any("width: 0%" not in w for w in widths)
        assert driver.find_elements(By.CSS_SELECTOR, ".timeline [role=listitem]")
        assert "Weight in the decision" in driver.find_element(By.CSS_SELECTOR, ".turn .explain").text
        assert (ARTIFACTS / "serve_page.png").stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight_then_exits_0(system, server):
    """Last: it stops the shared server. Requests in flight when SIGTERM arrives are answered; new ones get 503."""
    bodies = [record_parts(system["corpus"], r) for r in system["records"][:6]]
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(post_form, server.port, "/v1/predict/record", b) for b in bodies]
        deadline, held = time.monotonic() + 30, 0.0
        while time.monotonic() < deadline and held < 1:  # until the server holds some
            metrics = request(server.port, "GET", "/metrics").body.decode()
            held = float(re.search(r"^emotrain_queue_depth (\S+)$", metrics, re.M)[1])
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        try:
            refused = request(server.port, "GET", "/health", timeout=5).status
        except OSError:
            refused = "closed"
        replies = [f.result(timeout=120) for f in futures]
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= held >= 1, (statuses, held)
    assert all(r.json()["turns"] for r in replies if r.status == 200)
    assert refused in (503, "closed")
    assert server.proc.wait(60) == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # nothing of it left soon after: workers, HTTP process, manager, tracker
        try:
            os.killpg(server.proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the server outlived it: " + subprocess.run(
            ["ps", "-o", "pid,stat,cmd", "-g", str(server.proc.pid)], capture_output=True, text=True).stdout)
