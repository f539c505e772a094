"""The command lines as a user types them: intgrads, intgrads-broker, gunicorn, make."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.testing.stack import (
    REPO,
    alive,
    base_env,
    descendants,
    free_port,
    http,
    start_broker,
)

BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def _bin(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{path} not installed (run `make install`)")
    return str(path)


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if http("GET", url + "/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(log.read_text()[-3000:])


def interrupt_and_check(process: subprocess.Popen) -> int:
    """Ctrl-C (SIGINT to the process group), then: exit 0 and no process left."""
    pids = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    code = process.wait(timeout=60)
    deadline = time.monotonic() + 30  # draining workers and multiprocessing's tracker exit after make
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {p: _cmdline(p) for p in pids if alive(p)}
    assert not left, f"processes left behind: {left}"
    return code


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def post_gzip(url: str, text: str) -> dict:
    status, headers, body = http("POST", url + "/model/", data=json.dumps({"sequence": text}).encode(),
                                 timeout=120)
    assert status == 200, body[:300]
    return torch.load(io.BytesIO(gzip.decompress(body)))


def test_intgrads_all_in_one_with_a_hugging_face_directory(tiny_bert_dir, tmp_path):
    port = free_port()
    log = tmp_path / "intgrads.log"
    process = subprocess.Popen([_bin("intgrads"), "--model", str(tiny_bert_dir), "--cpu", "-p", str(port)],
                               env=base_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, process, log)
        grads = post_gzip(url, "a great film")
        assert grads["intermediate_gradients"].shape[0] == 50
        assert "curl http://127.0.0.1:" in log.read_text()  # the line to try is printed
    finally:
        assert interrupt_and_check(process) == 0


def _old_bert_checkpoint(tiny_bert_dir: Path, path: Path) -> Path:
    """The original server's BERT layout: gamma/beta LayerNorms, 'module.' keys."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.hidden_size, config.num_attention_heads, config.intermediate_size = 64, 1, 128
    torch.manual_seed(0)
    state = BertForSequenceClassification(config).state_dict()
    renamed = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        if "position_ids" not in key:
            renamed["module." + key] = value
    torch.save(renamed, path)
    return path


@pytest.mark.parametrize("flag", ["-bp", "-xll"])
def test_original_checkpoint_flags(flag, tiny_bert_dir, tiny_xlnet_dir, tmp_path):
    if flag == "-bp":
        checkpoint, tokenizer = _old_bert_checkpoint(tiny_bert_dir, tmp_path / "bert.pth"), tiny_bert_dir
    else:
        from transformers import XLNetForSequenceClassification

        model = XLNetForSequenceClassification.from_pretrained(tiny_xlnet_dir)
        checkpoint = tmp_path / "xlnet-large.pth"
        torch.save({"module." + k: v for k, v in model.state_dict().items()}, checkpoint)
        tokenizer = tiny_xlnet_dir
    broker = start_broker([flag, str(checkpoint), "--tokenizer", str(tokenizer)], workers=1, folder=tmp_path)
    try:
        broker.wait_ready()
        with BrokerClient(broker.frontend) as client:
            payload = client.attribute("a great film", options={"n_steps": 50})
        meta = payload.meta
        assert meta["labels"] == ["negative", "positive"]
        assert meta["completeness_error"] < 0.01 * abs(meta["f_input"] - meta["f_baseline"]) + 1e-4
    finally:
        broker.stop()


def test_cuda_without_a_gpu_is_a_clear_error():
    result = subprocess.run([_bin("intgrads-broker"), "start", "--cuda", "--frontend", "ipc:///tmp/igz-nogpu-f",
                             "--backend", "ipc:///tmp/igz-nogpu-b"],
                            env=base_env({"CUDA_VISIBLE_DEVICES": ""}), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "no GPU is visible" in result.stderr


def test_two_models_cannot_be_given_at_once(tiny_bert_dir, tmp_path):
    result = subprocess.run([_bin("intgrads-broker"), "start", "--model", str(tiny_bert_dir), "-bp", __file__],
                            env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "give one model" in result.stderr


def test_help_is_complete():
    for command in (["intgrads-broker", "--help"], ["intgrads-broker", "start", "--help"],
                    ["intgrads-broker", "worker", "--help"], ["intgrads-broker", "status", "--help"],
                    ["intgrads-broker", "keys", "--help"], ["intgrads", "--help"]):
        out = subprocess.run([_bin(command[0]), *command[1:]], capture_output=True, text=True, check=True).stdout
        assert "Usage:" in out
    start = subprocess.run([_bin("intgrads-broker"), "start", "--help"], capture_output=True, text=True).stdout
    for flag in ("--model", "-bp", "-xlb", "-xll", "--tokenizer", "--name", "--cuda / --cpu", "--num-cuda-devs",
                 "--workers", "--baseline", "--dtype", "--frontend", "--backend", "--keys", "--queue-bound"):
        assert flag in start


def test_status_command(tiny_bert_dir, tmp_path):
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=1, folder=tmp_path)
    try:
        broker.wait_ready()
        out = subprocess.run([_bin("intgrads-broker"), "status", "--frontend", broker.frontend],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        assert "model tiny: 1 workers" in out
    finally:
        broker.stop()
    failed = subprocess.run([_bin("intgrads-broker"), "status", "--frontend", broker.frontend, "--timeout", "1"],
                            capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1 and "cannot reach the broker" in failed.stderr


def test_gunicorn_from_the_repo_root_picks_up_its_config(tiny_bert_dir, tmp_path):
    broker = start_broker(["--model", str(tiny_bert_dir)], workers=1, folder=tmp_path)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = base_env({"INTGRADS_BROKER": broker.frontend, "INTGRADS_BIND": f"127.0.0.1:{port}"})
    process = subprocess.Popen([_bin("gunicorn"), "frontend:app"], cwd=REPO, env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        broker.wait_ready()
        wait_http(f"http://127.0.0.1:{port}", process, log)
        assert post_gzip(f"http://127.0.0.1:{port}", "a great film")["tokens"][0] == "[CLS]"
        assert "Using worker: gthread" in log.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        broker.stop()


@pytest.mark.slow
def test_make_serve_serves_the_demo_model(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(["make", "serve", f"PORT={port}"], cwd=REPO, env=base_env(),
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, process, log, timeout=300)
        grads = post_gzip(url, "a great film")
        assert grads["target_label"] == "positive"
        assert grads["completeness_error"] < 0.01 * abs(grads["f_input"] - grads["f_baseline"])
    finally:
        interrupt_and_check(process)
