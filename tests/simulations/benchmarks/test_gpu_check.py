import pytest
import torch
from typer.testing import CliRunner

from csfl import app
from simulations.benchmarks.gpu_check import timed


def test_a_figure_is_its_wall_time_and_on_the_cpu_no_gpu_memory():
    figures = timed(torch.device("cpu"), lambda: torch.ones(8).sum())
    assert set(figures) == {"seconds"} and 0 <= figures["seconds"] < 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="there it runs: scripts/gpu-check.sh")
def test_the_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["gpu-check", "--out", str(tmp_path / "f.json")])
    assert result.exit_code == 2 and "no CUDA device here" in result.output
    assert not (tmp_path / "f.json").exists()
