"""``benchmarks/gpu_check.py`` in its dry mode on the CPU: every part reports, the ratios are loop / model."""
import dataclasses
import json
import math

import pytest
import torch

from medzoo.benchmarks import gpu_check


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_dry_run_reports_every_part_with_finite_figures(tmp_path):
    threads = torch.get_num_threads()
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dry_run"] is True
    for part in ("environment", "speed", "parity", "torchrun"):
        assert report[part]["status"] == "ok", (part, report[part].get("error"))
        assert _finite(report[part]["seconds"])

    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["gpu_count"] == 0 and env["device"] == "cpu"

    speed = report["speed"]
    assert [m["model"] for m in speed["models"]] == list(gpu_check.DRY.models)
    assert (speed["rounds"], speed["warmup_batches"]) == (2, 1)  # 2 batches in alternating rounds of 1
    assert _finite(speed["loader_images_per_s"]) and speed["loader_images_per_s"] > 0
    for m in speed["models"]:
        assert m["status"] == "ok"
        for key in ("model_images_per_s", "loop_images_per_s", "loop_over_model", "loader_over_model"):
            assert _finite(m[key]) and m[key] > 0, key
        assert m["loop_over_model"] == pytest.approx(m["loop_images_per_s"] / m["model_images_per_s"], rel=1e-9)
        assert m["loader_over_model"] == pytest.approx(speed["loader_images_per_s"] / m["model_images_per_s"],
                                                       rel=1e-9)
        assert m["meets_goal"] == (m["loop_over_model"] >= report["goal_loop_over_model"])

    parity = report["parity"]
    assert len(parity["rows"]) == 3 * len(gpu_check.DRY.parity_models)
    for row in parity["rows"]:
        assert all(_finite(row[k]) for k in ("max_abs_diff", "max_rel_diff", "max_abs_logit", "logit_spread", "limit"))
        assert row["passed"] is (True if row["judged"] else None)
    assert parity["passed"] is True

    run = report["torchrun"]
    assert run["finished"] is True and run["returncode"] == 0 and run["nproc"] == 1
    assert run["collective"]["all_reduce_ok"] is True and run["collective"]["backend"] == "gloo"
    assert 0.0 <= run["val_auc"] <= 1.0 and _finite(run["wall_s"])
    assert (tmp_path / "torchrun.log").is_file()

    markdown = (tmp_path / "report.md").read_text()
    for heading in ("## Environment", "## Training speed", "## fp32 parity", "## torchrun"):
        assert heading in markdown


def test_spent_budget_skips_every_part_but_the_environment(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--budget", "0"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["environment"]["status"] == "ok"
    for part in ("speed", "parity", "torchrun"):
        assert report[part]["status"] == "skipped" and "budget" in report[part]["reason"]
    assert "speed: skipped" in capsys.readouterr().out
    assert "skipped: time budget spent" in (tmp_path / "report.md").read_text()


def test_without_cuda_it_asks_for_the_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--out", str(tmp_path)])
    assert str(exc.value) == f"gpu_check: {gpu_check.NO_CUDA}"
    assert not (tmp_path / "report.json").exists()


def test_a_failing_part_keeps_what_it_published(tmp_path):
    budget = gpu_check.Budget(60)
    report = gpu_check.Report(tmp_path, gpu_check.DRY, budget, dry_run=True)

    def part(publish):
        publish(measured=1.5)
        raise RuntimeError("CUDA error: out of memory")

    gpu_check.run_part(report, "speed", part, 0, budget)
    saved = json.loads((tmp_path / "report.json").read_text())["speed"]
    assert saved["status"] == "failed" and saved["measured"] == 1.5
    assert saved["error"] == "RuntimeError: CUDA error: out of memory"
    assert gpu_check.failures(report.data) == ["speed"]
    assert "**failed**: `RuntimeError: CUDA error: out of memory`" in (tmp_path / "report.md").read_text()


def test_a_torchrun_past_its_timeout_is_killed_and_reported(tmp_path):
    settings = dataclasses.replace(gpu_check.DRY, run_timeout_s=0.5)
    result = {}
    with pytest.raises(RuntimeError, match=r"^the torchrun run did not finish \(exit -?\d+, timed out; see torchrun.log\)$"):
        gpu_check.check_torchrun(settings, torch.device("cpu"), gpu_check.Budget(60), tmp_path, result.update)
    assert result["timed_out"] is True and result["finished"] is False and result["val_auc"] is None
    assert result["collective"]["all_reduce_ok"] is True
    assert "log_tail" in result


def test_batch_statistics_come_from_the_models_own_activations():
    # A 1x1 convolution summing the 3 channels of N(0, 1) noise gives activations of variance 3: the averaged
    # running variance is about 3 and the mean about 0, in eval mode afterwards.
    conv = torch.nn.Conv2d(3, 1, 1, bias=False)
    torch.nn.init.ones_(conv.weight)
    model = gpu_check.with_batch_statistics(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(1)), size=16, batch=8)
    norm = model[1]
    assert not model.training and norm.momentum is None and int(norm.num_batches_tracked) == 3
    assert float(norm.running_var) == pytest.approx(3.0, rel=0.05) and abs(float(norm.running_mean)) < 0.05


def test_an_environment_field_that_cannot_be_read_holds_its_error(monkeypatch):
    def broken():
        raise RuntimeError("cuDNN not loadable")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", broken)
    env = {}
    gpu_check.check_environment(torch.device("cpu"), env.update)
    assert env["cudnn_version"] == "error: RuntimeError: cuDNN not loadable"
    assert env["torch"] == torch.__version__ and env["gpu_count"] == 0
