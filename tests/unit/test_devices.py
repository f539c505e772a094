"""Device-group and core planning, without GPUs."""

import pytest

from intgrads_zmq.service.devices import PlanError, plan_cpu_workers, plan_gpu_groups


@pytest.mark.parametrize(
    ("gpus", "per_group", "expected"),
    [
        (8, 2, [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]),
        (8, 4, [("0", "1", "2", "3"), ("4", "5", "6", "7")]),
        (4, 1, [("0",), ("1",), ("2",), ("3",)]),
        (5, 2, [("0", "1"), ("2", "3")]),  # the fifth GPU stays unused
        (3, 3, [("0", "1", "2")]),
    ],
)
def test_gpu_groups_are_consecutive(gpus, per_group, expected):
    plans = plan_gpu_groups([str(i) for i in range(gpus)], per_group)
    assert [p.gpus for p in plans] == expected
    assert all(p.device == "cuda" for p in plans)


def test_gpu_groups_follow_cuda_visible_devices_order():
    plans = plan_gpu_groups(["6", "2", "7", "3"], 2)
    assert [p.gpus for p in plans] == [("6", "2"), ("7", "3")]
    assert plans[0].describe() == "GPU 6,2"


def test_too_few_gpus_and_no_gpu_are_clear_errors():
    with pytest.raises(PlanError, match="needs 4 GPUs but only 2"):
        plan_gpu_groups(["0", "1"], 4)
    with pytest.raises(PlanError, match="no GPU is visible"):
        plan_gpu_groups([], 1)
    with pytest.raises(PlanError):
        plan_gpu_groups(["0"], 0)


def test_cpu_cores_are_divided_between_workers():
    plans = plan_cpu_workers(2, [0, 1, 2, 3, 4])
    assert [p.cores for p in plans] == [(0, 1), (2, 3, 4)]
    assert [p.threads for p in plans] == [2, 3]
    assert plan_cpu_workers(1, [0, 1])[0].cores == (0, 1)


def test_more_cpu_workers_than_cores_share_round_robin():
    plans = plan_cpu_workers(3, [0, 1])
    assert [p.cores for p in plans] == [(0,), (1,), (0,)]
    assert all(p.threads == 1 for p in plans)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from intgrads_zmq.service.devices import cpu_flags, cpu_has_native_bf16

    avx2_only = tmp_path / "cpuinfo-avx2"
    avx2_only.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert not cpu_has_native_bf16(cpu_flags(str(avx2_only)))
    assert cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert cpu_has_native_bf16(frozenset({"amx_bf16", "amx_tile"}))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_bf16_on_a_cpu_without_it_is_refused_at_start(monkeypatch):
    """Regression: on an AVX2-only EPYC, bf16 autocast ran for 20+ minutes."""
    from intgrads_zmq.service import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo="": frozenset({"avx2"}))
    with pytest.raises(devices.PlanError, match="native bf16"):
        devices.check_dtype("bf16", "cpu")
    devices.check_dtype("float32", "cpu")
    devices.check_dtype("bf16", "cuda")  # GPUs keep bf16


def test_planning_workers_checks_the_dtype(monkeypatch):
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.service import devices
    from intgrads_zmq.service.assembly import plan_workers
    from intgrads_zmq.service.settings import ServeSettings

    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo="": frozenset({"avx2"}))
    with pytest.raises(devices.PlanError, match="native bf16"):
        plan_workers("ipc:///tmp/x", ModelSpec(), ServeSettings(cuda=False, dtype="bf16"))
    (config,) = plan_workers("ipc:///tmp/x", ModelSpec(), ServeSettings(cuda=False, n_steps="auto"))
    assert config.defaults["n_steps"] == "auto" and config.dtype == "float32"


def test_a_broker_only_start_writes_nothing_into_its_keys_folder(tmp_path):
    """Regression: --workers 0 --keys DIR wrote a local-worker key pair into DIR,
    so a read-only keys folder (a Kubernetes Secret) could not be used."""
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.service.assembly import build_broker
    from intgrads_zmq.service.security import make_keys
    from intgrads_zmq.service.settings import ServeSettings

    keys = tmp_path / "keys"
    make_keys(str(keys), 1)
    before = sorted(p.relative_to(keys) for p in keys.rglob("*"))
    broker, supervisor = build_broker(
        ModelSpec(), ServeSettings(workers=0), frontend=f"ipc://{tmp_path}/f",
        backend=f"ipc://{tmp_path}/b", keys=str(keys))
    try:
        assert sorted(p.relative_to(keys) for p in keys.rglob("*")) == before
    finally:
        broker.close()
