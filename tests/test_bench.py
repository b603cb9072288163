"""``python -m lmttm_monai.experiments.bench``: the report it writes and the mistakes it refuses (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lmttm_monai.experiments import bench


@pytest.mark.slow
def test_bench_writes_a_report_with_throughput_flops_memory_ratios_and_the_data_wait(tmp_path, medmnist_dir, monkeypatch):
    monkeypatch.setenv("MONAI_DATA_DIRECTORY", str(medmnist_dir.parent))
    # TTM's training step is made slower by a known delay: the timings and the ratio must show it
    delay = 1.0
    step = bench._Runner.step

    def slowed_step(self):
        step(self)
        if self.case.name == "ttm":
            time.sleep(delay)

    monkeypatch.setattr(bench._Runner, "step", slowed_step)
    out = tmp_path / "benchmarks.md"
    path = bench.run(out=str(out), rounds=2, only="lmttm,ttm", data="lmttm", data_iterations=2, batch=4)
    report = json.loads(out.with_suffix(".json").read_text())
    assert path == str(out) and set(report["cases"]) == {"lmttm", "ttm"}
    for case in report["cases"].values():
        assert len(case["step_s"]) == 2 and all(t > 0 for t in case["step_s"])
        assert case["train_samples_per_s"] > 0 and case["infer_ms"] > 0 and case["memory_mib"] > 0
        # a 28^3 LMTTM/TTM step at the bundle's width is about 1 GFLOP per sample (counted, not timed)
        assert 0.2 < case["step_gflop_per_sample"] < 5
    lmttm, ttm = report["cases"]["lmttm"]["step_s"], report["cases"]["ttm"]["step_s"]
    assert min(ttm) >= delay  # every timed TTM step holds the delay
    ratio = report["ratios"]["lmttm / ttm"]
    assert ratio["rounds"] == pytest.approx([t / s for t, s in zip(ttm, lmttm)])  # per round, from those timings
    assert ratio["median"] >= delay / max(lmttm) > 1  # LMTTM reads as the faster one by at least the delay
    assert report["matmul_peak_gflops"]["median"] > 0 and report["machine"]["torch"]
    wait = report["data_wait"][0]
    assert wait["bundle"] == "lmttm" and wait["iterations"] >= 1 and 0 <= wait["fraction"] < 1
    text = out.read_text()
    assert "| LMTTM (lmttm bundle) | 4 | 1x28x28x28 |" in text and "lmttm / ttm" in text and "waiting for data" in text


def test_bench_refuses_an_existing_report_unknown_cases_and_the_authors_case_without_their_code(tmp_path):
    existing = tmp_path / "benchmarks.md"
    existing.write_text("earlier\n")
    result = subprocess.run([sys.executable, "-m", "lmttm_monai.experiments.bench", "--out", str(existing), "--only", "lmttm"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and existing.read_text() == "earlier\n"
    assert result.stderr.strip().splitlines()[-1].endswith("exists; pass --overwrite to replace it or --out to write elsewhere")
    with pytest.raises(bench.BenchError, match="authors_lmttm needs --authors PATH"):
        bench.run(out=str(tmp_path / "b.md"), only="authors_lmttm")
    with pytest.raises(bench.BenchError, match="unknown case\\(s\\) vit"):
        bench.run(out=str(tmp_path / "b.md"), only="vit")
    with pytest.raises(bench.BenchError, match="has no model/LMTTM.py"):
        bench.run(out=str(tmp_path / "b.md"), only="authors_lmttm", authors=str(tmp_path))
    assert not (tmp_path / "b.md").exists()


@pytest.mark.parametrize(("device", "ratio", "verdict"), [("cpu", 1.2, "missed by 20%"), ("cpu", 1.8, "met"),
                                                          ("cuda:0", 2.4, "missed by 20%")])  # fmt: skip
def test_goal_line_says_met_or_by_how_much_it_is_missed_and_that_the_other_device_was_not_measured(device, ratio, verdict):
    case = {"step_gflop_per_sample": 20.0, "fraction_of_matmul_peak": 0.5}
    report = {"device": device, "ratios": {"lmttm_authors_config / authors_lmttm": {"median": ratio}},
              "cases": {"lmttm_authors_config": case, "authors_lmttm": {**case, "step_gflop_per_sample": 30.0}}}
    text = "\n".join(bench._goal_lines(report))
    goal = "3x" if device.startswith("cuda") else "1.5x"
    assert f"{goal} the authors' LMTTM" in text and f"Measured **{ratio:.2f}x**: {verdict}." in text
    other = "cpu (1.5x)" if device.startswith("cuda") else "cuda (3x)"
    assert f"Speed goal on {other}: not measured by this run" in text
    assert "(0.67 of theirs)" in text and "about the same rate" in text


@pytest.mark.slow
def test_a_compiled_case_computes_what_the_eager_case_does_and_is_timed_beside_it(tmp_path):
    import torch

    eager = bench.cases()["lmttm"]
    # aot_eager: dynamo traces the network and autograd as inductor would see them, without generating C++
    compiled = bench.compiled_case(eager, backend="aot_eager")
    net, twin = eager.build(2).eval(), compiled.build(2).eval()
    twin._orig_mod.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 28, 28, 28, generator=torch.Generator().manual_seed(0))
    net(x).square().sum().backward()
    twin(x).square().sum().backward()
    with torch.no_grad():
        assert torch.allclose(twin(x), net(x), atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), twin._orig_mod.parameters()):
        assert p.grad is not None and torch.allclose(q.grad, p.grad, atol=1e-5, rtol=1e-4), name
    out = tmp_path / "benchmarks.md"
    bench.run(out=str(out), rounds=2, only="lmttm", compile="lmttm", compile_backend="aot_eager", batch=2)
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["cases"]) == ["lmttm", "lmttm_compiled"]
    assert report["cases"]["lmttm_compiled"]["step_gflop_per_sample"] == pytest.approx(
        report["cases"]["lmttm"]["step_gflop_per_sample"])
    assert len(report["ratios"]["lmttm_compiled / lmttm"]["rounds"]) == 2
    assert "| LMTTM (lmttm bundle), torch.compile | 2 |" in out.read_text()
    with pytest.raises(bench.BenchError, match="authors_lmttm cannot be compiled"):
        bench.run(out=str(tmp_path / "c.md"), only="lmttm", compile="authors_lmttm")
