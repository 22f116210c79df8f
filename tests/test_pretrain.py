"""Short pretraining runs on the CPU: metrics, checkpoints, interruption and resume."""

import json
from pathlib import Path

import pytest
import torch

from byol.checkpoint import load_checkpoint
from byol.errors import UserError
from byol.pretrain import prepare_run
from byol.run_folder import checkpoint_run_dir
from tests.conftest import run_pretraining


def test_short_pretrain_writes_config_metrics_and_a_loadable_checkpoint(tiny):
    trainer, summary, _ = run_pretraining({**tiny, "checkpoint_every": 4, "keep_checkpoints": 1})
    run = Path("run")
    assert summary.step == summary.total_steps == 6 and not summary.interrupted
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert set(records[0]) >= {"loss", "lr", "tau", "images_per_s", "collapse_std", "epoch"}
    assert records[0]["tau"] == pytest.approx(trainer.config.tau_base)
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == "resnet18"
    assert any((run / "tensorboard").iterdir())
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 6 and state["config"]["batch_size"] == 8
    # keep_checkpoints=1: the step-4 file is pruned; last.pt stays.
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000006.pt"]


def test_a_checkpoints_run_folder_is_spelled_as_given_where_that_names_it(tmp_path,
                                                                          monkeypatch):
    step_file = tmp_path / "run" / "checkpoints" / "step-0000002.pt"
    step_file.parent.mkdir(parents=True)
    step_file.write_bytes(b"")
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    assert checkpoint_run_dir(Path("run/last.pt")) == Path("run")
    assert checkpoint_run_dir(Path("run/checkpoints/step-0000002.pt")) == Path("run")
    assert checkpoint_run_dir(Path("run")) == Path("run")
    (tmp_path / "best.pt").symlink_to(step_file)
    assert checkpoint_run_dir(Path("best.pt")) == tmp_path / "run"
    (tmp_path / "steps").symlink_to(step_file.parent)
    assert checkpoint_run_dir(Path("steps/step-0000002.pt")) == tmp_path / "run"
    monkeypatch.chdir(step_file.parent)  # inside checkpoints/: the run is one up
    assert checkpoint_run_dir(Path("step-0000002.pt")) == tmp_path / "run"


def test_an_interrupted_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tiny):
    straight, _, _ = run_pretraining(tiny, out="straight")
    _, partial, _ = run_pretraining(tiny, out="parts", stop_at=3)
    assert partial.interrupted and partial.step == 3
    assert load_checkpoint(Path("parts/last.pt"))["step"] == 3
    resumed, final, resumed_from = run_pretraining(tiny, out="parts", resume="parts/last.pt")
    assert resumed_from == Path("parts/last.pt") and final.step == 6
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    for p, q in zip(straight.model.trainable_parameters(), resumed.model.trainable_parameters()):
        assert torch.equal(straight.optimizer.state[p]["momentum_buffer"],
                           resumed.optimizer.state[q]["momentum_buffer"])
    losses = [json.loads(line)["loss"] for line in Path("straight/metrics.jsonl").open()]
    resumed_losses = [json.loads(line)["loss"] for line in Path("parts/metrics.jsonl").open()]
    assert resumed_losses == losses


def test_resume_auto_continues_the_run_in_the_out_folder(tiny):
    run_pretraining(tiny, out="run", stop_at=2)
    trainer, summary, resumed_from = run_pretraining(tiny, out="run", resume="auto")
    assert resumed_from == Path("run/last.pt") and summary.step == 6


def test_resume_auto_without_out_finds_the_newest_matching_run(tiny):
    first, _, _ = run_pretraining(tiny, out=None, stop_at=2)
    trainer, resumed_from = prepare_run(None, tiny, None, "auto")
    assert resumed_from == first.run_dir / "last.pt" and trainer.step == 2
    other, resumed_other = prepare_run(None, {**tiny, "lr": 0.123}, None, "auto")
    assert resumed_other is None and other.run_dir != first.run_dir


def test_a_folder_holding_a_run_is_not_overwritten_without_resume(tiny):
    run_pretraining(tiny)
    with pytest.raises(UserError, match="--resume auto"):
        prepare_run(None, tiny, Path("run"), None)


def test_resuming_with_a_changed_setting_is_refused_but_runtime_options_may_change(tiny):
    run_pretraining(tiny, stop_at=2)
    with pytest.raises(UserError, match="lr=0.5"):
        prepare_run(None, {**tiny, "lr": 0.5}, Path("run"), "auto")
    trainer, _ = prepare_run(None, {**tiny, "workers": 1}, Path("run"), "auto")
    assert trainer.config.workers == 1 and trainer.step == 2


def test_a_file_that_is_not_a_checkpoint_is_a_user_error(tiny, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a loadable checkpoint"):
        prepare_run(None, tiny, None, str(junk))
    with pytest.raises(UserError, match="No checkpoint"):
        prepare_run(None, tiny, None, str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_the_loss_falls_on_the_demo_data(tiny):
    _, summary, _ = run_pretraining({**tiny, "batch_size": 32, "steps": 25, "lr": 1.0})
    losses = [json.loads(line)["loss"] for line in Path("run/metrics.jsonl").open()]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert summary.last_record["collapse_std"] > 0.01


@pytest.mark.slow
def test_a_compiled_run_matches_an_eager_run(tiny):
    # No warmup, so both steps move the weights (in a warmup step 1's lr is 0): the second loss
    # is taken after an update, and the weights compared below after two.
    settings = {**tiny, "steps": 2, "warmup_epochs": 0, "lr": 0.05}
    eager, _ = prepare_run(None, settings, Path("eager"), None)
    initial = {name: t.clone() for name, t in eager.model.state_dict().items()}
    initial_params = eager.optimizer.flat.params.data.clone()
    eager.fit()
    compiled, _ = prepare_run(None, {**settings, "compile": True}, Path("compiled"), None)
    compiled.fit()
    assert all(json.loads(line)["lr"] > 0 for line in Path("eager/metrics.jsonl").open())
    assert (eager.optimizer.flat.params.data - initial_params).norm() > 0.05  # 0.15 here

    assert _losses("compiled") == pytest.approx(_losses("eager"), rel=1e-3)
    # Inductor fuses and reorders the fp32 arithmetic, and the encoder's gradient is
    # ill-conditioned in this tiny network (it reaches the features through BatchNorms over 8
    # images, and most of it cancels): at step 1, eager fp32 is 0.3-0.5% from an fp64
    # computation and compiled 1.3-1.8%; the second step's gradient, at weights already apart,
    # adds more. Measured after two steps: every tensor within 7% of how far it moved (all
    # parameters together 3%), the momenta 8% apart. 20% leaves room for another CPU's
    # kernels; a step lost, doubled, or applied to a copy of a layer is 100% or more off.
    _assert_moved_alike(initial, eager.model.state_dict(), compiled.model.state_dict(), 0.2)
    eager_momenta = eager.optimizer.flat.momenta.data
    apart = (compiled.optimizer.flat.momenta.data - eager_momenta).norm()
    assert apart <= 0.2 * eager_momenta.norm()


def test_a_bf16_run_on_the_cpu_is_channels_last_and_tracks_an_fp32_run(tiny):
    # The small stem: with the ImageNet stem at 16 px a stride-2 convolution sees 1x1 inputs,
    # where oneDNN's bf16 weight gradient is sometimes NaN (see the README).
    settings = {**tiny, "small_stem": True, "steps": 3}
    run_pretraining({**settings, "precision": "fp32"}, out="fp32")
    trainer, _, _ = run_pretraining({**settings, "precision": "bf16"}, out="bf16")
    conv = trainer.model.online.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert _losses("bf16") == pytest.approx(_losses("fp32"), rel=5e-2)


def test_a_run_with_fused_kernels_matches_an_eager_run(tiny):
    # On the CPU the fused EMA and LARS run under the Triton interpreter (the loss uses the
    # reference there), so this checks their wiring through the flat buffers step by step.
    settings = {**tiny, "steps": 3}
    eager, _, _ = run_pretraining({**settings, "kernels": "eager"}, out="eager")
    fused, _, _ = run_pretraining({**settings, "kernels": "fused"}, out="fused")
    assert _losses("fused") == pytest.approx(_losses("eager"), rel=1e-4)
    # The norms are summed in another order; three steps through BatchNorm amplify that to a
    # few 1e-4 in a handful of weights.
    for mine, theirs in zip(fused.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(mine, theirs, atol=3e-4, rtol=1e-3)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").open()]


def _assert_moved_alike(initial: dict, expected: dict, actual: dict, tolerance: float):
    """Each floating-point tensor of `actual` (a state dict: weights, target, BatchNorm
    statistics) is within `tolerance` times how far `expected`'s moved from `initial`.

    A bias just before a BatchNorm gets only rounding noise as its gradient (the BatchNorm
    removes any constant) and moves by less than 1e-8; the 1e-6 floor absorbs that.
    """
    for name, start in initial.items():
        if start.is_floating_point():
            moved = (expected[name] - start).norm().item()
            apart = (actual[name] - expected[name]).norm().item()
            assert apart <= tolerance * moved + 1e-6, f"{name} {apart:.1e} apart, moved {moved:.1e}"


def test_a_run_that_cannot_start_leaves_no_folder_behind(tiny):
    with pytest.raises(UserError):
        prepare_run(None, {**tiny, "data": "/no/such/folder"}, Path("run"), None)
    with pytest.raises(UserError, match="kernels"):
        prepare_run(None, {**tiny, "kernels": "triton"}, Path("run"), None)
    assert not Path("run").exists()


def test_fused_kernels_on_the_cpu_need_the_triton_interpreter(tiny, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(UserError, match="--kernels fused needs a CUDA GPU"):
        prepare_run(None, {**tiny, "kernels": "fused"}, Path("run"), None)


def test_resume_auto_starts_over_a_run_that_ended_before_its_first_checkpoint(tiny):
    Path("run").mkdir()
    Path("run/metrics.jsonl").write_text('{"step": 1, "loss": 3.9}\n')
    with pytest.raises(UserError, match="other settings and no checkpoint"):
        prepare_run(None, tiny, Path("run"), "auto")  # no config.json: not known to be ours
    assert Path("run/metrics.jsonl").read_text() == '{"step": 1, "loss": 3.9}\n'

    Path("run/metrics.jsonl").unlink()
    prepare_run(None, tiny, Path("run"), "auto")  # writes config.json, and no step is taken
    assert Path("run/config.json").is_file() and not Path("run/last.pt").exists()
    with pytest.raises(UserError, match="other settings"):
        prepare_run(None, {**tiny, "lr": 0.1}, Path("run"), "auto")
    _, summary, resumed = run_pretraining(tiny, resume="auto")
    assert resumed is None and summary.step == tiny["steps"]


def test_a_folder_with_any_part_of_a_run_is_not_reused_without_resume(tiny):
    Path("run").mkdir()
    Path("run/config.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        prepare_run(None, tiny, Path("run"), None)


def test_resume_refuses_a_different_preset_and_another_runs_folder(tiny):
    run_pretraining(tiny, stop_at=2)
    with pytest.raises(UserError, match="changed settings"):
        prepare_run("cifar", tiny, None, "run/last.pt")
    run_pretraining(tiny, out="other", stop_at=1)
    with pytest.raises(UserError, match="another run"):
        prepare_run(None, tiny, Path("other"), "run/last.pt")


def test_an_older_checkpoint_is_continued_in_a_new_folder_not_over_its_run(tiny):
    settings = {**tiny, "checkpoint_every": 2, "keep_checkpoints": 5}
    run_pretraining(settings)
    before = {p: p.read_bytes() for p in Path("run").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="is step 2, but the run in run has gone on to step 6.*"
                                        "--out NEWDIR.*--resume auto --out run"):
        prepare_run(None, settings, None, "run/checkpoints/step-0000002.pt")
    assert {p: p.read_bytes() for p in Path("run").rglob("*") if p.is_file()} == before
    _, summary, _ = run_pretraining(settings, out="branch",
                                    resume="run/checkpoints/step-0000002.pt")
    steps = [json.loads(line)["step"] for line in Path("branch/metrics.jsonl").open()]
    assert steps == list(range(3, 7)) and summary.step == 6
    assert {p: p.read_bytes() for p in Path("run").rglob("*") if p.is_file()} == before
    # The newest checkpoint itself, by either name, continues in place (here: nothing left).
    prepare_run(None, settings, None, "run/checkpoints/step-0000006.pt")
    # A damaged last.pt does not block the way back to an older checkpoint.
    Path("run/last.pt").unlink()
    Path("run/last.pt").write_bytes(b"damaged")
    prepare_run(None, settings, None, "run/checkpoints/step-0000002.pt")


def test_checkpoints_are_pruned_by_step_number_not_by_name(tmp_path):
    from byol.checkpoint import save_checkpoint

    for step in (9_999_999, 10_000_000):
        save_checkpoint({"step": step}, tmp_path, step, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-10000000.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 10_000_000


def test_resuming_a_finished_run_has_nothing_to_do(tiny):
    run_pretraining(tiny)
    trainer, summary, _ = run_pretraining(tiny, resume="run/last.pt")
    assert summary.step == 6 and summary.last_record is None
    assert summary.checkpoint == Path("run/last.pt")
