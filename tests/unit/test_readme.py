"""Every command in README.md is tested.

Each shell line of the README's ```sh blocks must match an entry below that
names the test running that command (or its equivalent with test paths and
ports); the named tests must exist. Commands that need hardware this machine
lacks (GPUs) name the tests that cover their planning and their error path.
A new README command without an entry fails this test.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

COVERAGE: list[tuple[str, list[str]]] = [
    (r"^make serve$", ["tests.stack.test_cli::test_make_serve_serves_the_demo_model"]),
    (r"^make test$", ["tests.unit.test_readme::test_every_readme_command_is_covered"]),  # CI runs it
    (r'^make test PYTEST_ARGS="-k broker"$', ["tests.unit.test_readme::test_every_readme_command_is_covered"]),
    (r"^intgrads --model \S+ --cpu$", ["tests.stack.test_cli::test_intgrads_all_in_one_with_a_hugging_face_directory"]),
    (r"^intgrads -bp \S+ --tokenizer \S+ --cpu$", ["tests.stack.test_cli::test_original_checkpoint_flags"]),
    (r"^intgrads -xlb \S+ --tokenizer \S+ --cuda --num-cuda-devs 2$",
     ["tests.unit.test_devices::test_gpu_groups_are_consecutive", "tests.stack.test_cli::test_cuda_without_a_gpu_is_a_clear_error"]),
    (r"^intgrads -xll \S+ --tokenizer \S+ --cpu --baseline pad$", ["tests.stack.test_cli::test_original_checkpoint_flags"]),
    (r"^intgrads-broker start --model \S+ --cpu --workers 2$", ["tests.stack.test_broker::test_requests_spread_over_both_workers"]),
    (r"^gunicorn frontend(:app)?$", ["tests.stack.test_gunicorn_launch::test_gunicorn_command_serves_with_our_settings"]),
    (r"^intgrads-broker keys --dir keys --workers 1$",
     ["tests.stack.test_broker::test_curve_authenticated_remote_worker_serves_and_a_wrong_key_never_does"]),
    (r"^deploy/k8s/secrets\.sh keys$",
     ["tests.unit.test_deploy::test_the_secrets_script_gives_each_pod_keys_that_open_its_port_and_no_other",
      "tests.unit.test_deploy::test_the_readme_secret_commands_make_what_the_manifests_mount"]),
    (r"^intgrads-broker keys --dir keys$",
     ["tests.unit.test_deploy::test_the_secrets_script_gives_each_pod_keys_that_open_its_port_and_no_other"]),
    (r"^intgrads-broker start --frontend tcp://127\.0\.0\.1:5555 --backend tcp://127\.0\.0\.1:5556 --keys keys --curve-on-loopback$",
     ["tests.stack.test_private_sockets::test_with_curve_on_loopback_a_keyed_gunicorn_serves_and_plain_peers_get_nowhere"]),
    (r"^INTGRADS_BROKER=tcp://127\.0\.0\.1:5555 INTGRADS_SERVER_KEY=\S+ INTGRADS_CLIENT_KEY=\S+ gunicorn frontend$",
     ["tests.stack.test_private_sockets::test_with_curve_on_loopback_a_keyed_gunicorn_serves_and_plain_peers_get_nowhere"]),
    (r"^intgrads-broker start --workers 0 --frontend tcp://0\.0\.0\.0:5555 --backend tcp://0\.0\.0\.0:5556 --keys keys$",
     ["tests.multihost.test_compose_commands::test_the_compose_services_serve_as_written"]),
    (r"^INTGRADS_BROKER=tcp://\S+:5555 INTGRADS_SERVER_KEY=broker\.key INTGRADS_CLIENT_KEY=frontend0\.key_secret gunicorn frontend$",
     ["tests.multihost.test_compose_commands::test_the_compose_services_serve_as_written"]),
    (r"^kubectl apply -k deploy/k8s$",  # no cluster here: rendered and schema-checked offline
     ["tests.unit.test_deploy::test_kustomize_renders_every_listed_object",
      "tests.unit.test_deploy::test_every_object_validates_against_a_recent_kubernetes_schema"]),
    (r"^intgrads-broker status$", ["tests.stack.test_cli::test_status_command"]),
    (r"^intgrads-broker drain (--worker )?\S+$",
     ["tests.stack.test_drain::test_draining_a_busy_worker_loses_nothing_and_it_is_not_restarted"]),
    (r"^kill -TERM <worker pid>$",
     ["tests.stack.test_drain::test_unknown_names_are_clear_errors_and_sigterm_drains_a_worker_itself"]),
    (r"^intgrads-broker worker --connect tcp://broker:5556 --model \S+ --name \S+ --cpu --server-key broker\.key --client-key worker\d+\.key_secret$",
     ["tests.stack.test_broker::test_curve_authenticated_remote_worker_serves_and_a_wrong_key_never_does",
      "tests.unit.test_security_endpoints::test_a_worker_without_keys_where_the_broker_demands_them_is_a_usage_error"]),
    (r"^make test-fast$", ["tests.unit.test_readme::test_every_readme_command_is_covered"]),  # runs tests/unit
    (r"^intgrads-broker worker --model \S+ --name xlnet --cpu$",
     ["tests.stack.test_private_sockets::test_a_worker_describing_the_model_differently_is_refused_and_models_is_unchanged",
      "tests.stack.test_frontend::test_several_sequences_and_a_named_model"]),
    (r"^intgrads-broker start -xlb \S+ --tokenizer \S+ --cuda --num-cuda-devs 2$",
     ["tests.unit.test_devices::test_gpu_groups_are_consecutive", "tests.stack.test_cli::test_cuda_without_a_gpu_is_a_clear_error"]),
    (r"^intgrads-broker keys --dir keys --workers 2$",
     ["tests.stack.test_broker::test_curve_authenticated_remote_worker_serves_and_a_wrong_key_never_does"]),
    (r"^intgrads-broker start --workers 0 --backend tcp://0\.0\.0\.0:5556 --keys keys$",
     ["tests.stack.test_broker::test_curve_authenticated_remote_worker_serves_and_a_wrong_key_never_does"]),
    (r"^intgrads-broker worker --connect tcp://\S+:5556 --server-key broker\.key --client-key worker0\.key_secret .*--cuda$",
     ["tests.stack.test_broker::test_curve_authenticated_remote_worker_serves_and_a_wrong_key_never_does",
      "tests.stack.test_cli::test_cuda_without_a_gpu_is_a_clear_error"]),
    (r"^intgrads-batch \S+ -o \S+ --server \S+( .*)?$",
     ["tests.stack.test_batch_runner::test_kill_9_midway_then_resume_ends_with_every_row_once"]),
    (r"^intgrads-batch \S+ -o \S+ --model \S+( .*)?$",
     ["tests.stack.test_batch_runner::test_private_stack_with_tensors_csv_and_parquet"]),
]


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # a continued line is one command
            line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 10
    missing = [c for c in commands if not any(re.match(pattern, c) for pattern, _ in COVERAGE)]
    assert not missing, f"README commands without a test: {missing}"


@pytest.mark.parametrize("pattern,tests", COVERAGE, ids=[p for p, _ in COVERAGE])
def test_named_tests_exist(pattern, tests):
    for name in tests:
        module, function = name.split("::")
        assert callable(getattr(importlib.import_module(module), function, None)), name


def test_the_readme_python_examples_run_against_the_seed_format(tmp_path):
    """The decode snippet at the top of the README, on a real reply."""
    import gzip
    import io

    import torch

    from intgrads_zmq.encoding import encode
    from intgrads_zmq.payload import AttributionPayload, RawTensor

    tensor = RawTensor("float32", (1, 2, 2), torch.arange(4, dtype=torch.float32).numpy().tobytes())
    payload = AttributionPayload({"tokens": ["a", "b"], "attributions": [1.0, 5.0]}, {"integrated_gradients": tensor})
    (tmp_path / "g.gzip").write_bytes(encode([payload], "torch", batch=False).body)
    with gzip.open(tmp_path / "g.gzip", "rb") as f:
        grads = torch.load(io.BytesIO(f.read()))
    assert grads["integrated_gradients"].shape == (1, 2, 2)
    assert list(zip(grads["tokens"], grads["attributions"], strict=True)) == [("a", 1.0), ("b", 5.0)]
