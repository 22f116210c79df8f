"""`byolctl eval ...` and `byolctl export`: judging and exporting a pretrained encoder."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from byolctl.errors import exits_cleanly
from byolctl.options import DeviceOpt, JsonOpt, PrecisionOpt, WorkersOpt
from byolctl.render import console

eval_app = typer.Typer(help="Evaluate a pretrained encoder: kNN or a linear classifier.",
                       no_args_is_help=True)


class Protocol(str, Enum):
    full = "full"
    cached = "cached"


CheckpointOpt = Annotated[Path, typer.Option(
    "--checkpoint", help="A pretraining checkpoint (.pt) or a run folder (its last.pt).",
    show_default=False)]
EvalDataOpt = Annotated[str, typer.Option(
    "--data", help="A folder with train/ and val/ (or test/), each <class>/<image>; or `demo`.")]
EvalImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", help="Image side in pixels \\[default: the pretraining size].",
    show_default=False)]
EvalBatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]


def _runtime(device) -> dict[str, Any]:
    from byol.pretrain import runtime_defaults  # deferred: keeps --help fast

    return runtime_defaults({"device": device.value} if device else {})


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def _run_with_progress(evaluate, **kwargs) -> dict[str, Any]:
    """Call an evaluation with a rich progress bar per task it reports."""
    with _progress() as progress:
        tasks: dict[str, int] = {}

        def on_progress(name: str, completed: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=completed)

        return evaluate(on_progress=on_progress, **kwargs)


def _report(result: dict[str, Any], checkpoint: Path, json_file: Path | None) -> None:
    """Print the result as a table, record it in the run folder, and write --json."""
    from byol.eval.run import record_result
    from byol.pretrain import checkpoint_run_dir

    title = (f"{result['evaluation']} ({result.get('protocol', 'k=' + str(result.get('k')))}) "
             f"- {result['arch']} step {result['step']} on {result['data']}")
    table = Table("metric", "value", title=title)
    table.add_row("top-1", f"{result['top1']:.2f}%")
    table.add_row("top-5", f"{result['top5']:.2f}%")
    table.add_row("images", f"{result['train_images']} train, {result['val_images']} "
                            f"{result['val_split']}")
    if result["skipped_images"]:
        table.add_row("skipped", f"{result['skipped_images']} unreadable images")
    table.add_row("time", f"{result['seconds']:.1f} s on {result['device']} "
                          f"({result['precision']})")
    console.print(table)
    run_dir = checkpoint_run_dir(checkpoint)
    console.print(f"Recorded in {record_result(result, run_dir)}")
    if json_file:
        json_file.write_text(json.dumps(result, indent=2) + "\n")


@eval_app.command("knn", epilog="Example: byolctl eval knn --checkpoint runs/r50/last.pt "
                                "--data /datasets/imagenet")
@exits_cleanly
def knn(
    checkpoint: CheckpointOpt,
    data: EvalDataOpt = "demo",
    k: Annotated[int, typer.Option("--k", help="Neighbours that vote.")] = 200,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Votes weigh exp(cosine similarity / temperature).")] = 0.1,
    batch_size: EvalBatchOpt = 256,
    image_size: EvalImageSizeOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
):
    """Weighted kNN accuracy of the frozen online encoder's features (top-1 and top-5).

    Center-crop features of the train split are the neighbours; the val split is classified.
    """
    from byol.errors import UserError
    from byol.eval.run import evaluate_knn

    if k < 1 or temperature <= 0 or batch_size < 1:
        raise UserError("--k and --batch-size must be at least 1 and --temperature positive.")
    runtime = _runtime(device)
    result = _run_with_progress(
        evaluate_knn, checkpoint=checkpoint, data=data, k=k, temperature=temperature,
        batch_size=batch_size, image_size=image_size, device=runtime["device"],
        precision=precision and precision.value, workers=workers or runtime["workers"])
    _report(result, checkpoint, json_file)


@eval_app.command("linear", epilog="Example: byolctl eval linear --checkpoint "
                                   "runs/r50/last.pt --data /datasets/imagenet")
@exits_cleanly
def linear(
    checkpoint: CheckpointOpt,
    data: EvalDataOpt = "demo",
    protocol: Annotated[Protocol, typer.Option(
        "--protocol", help="full: new crops and flips each epoch through the frozen encoder; "
        "cached: center-crop features once, then the classifier alone (fast).")] = Protocol.full,
    epochs: Annotated[int, typer.Option("--epochs", help="Classifier epochs.")] = 90,
    batch_size: EvalBatchOpt = 256,
    lr: Annotated[float, typer.Option(
        "--lr", help="SGD (Nesterov) base learning rate per 256 images, cosine to 0.")] = 0.1,
    image_size: EvalImageSizeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the classifier.")] = 0,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
):
    """Linear classification accuracy on the frozen online encoder (top-1 and top-5).

    A linear layer is trained on the train split's features (BatchNorm in eval mode) and
    tested on the val split's center crops.
    """
    from byol.errors import UserError
    from byol.eval.linear import LinearSettings
    from byol.eval.run import evaluate_linear

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError("--epochs and --batch-size must be at least 1 and --lr positive.")
    runtime = _runtime(device)
    settings = LinearSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = _run_with_progress(
        evaluate_linear, checkpoint=checkpoint, data=data, protocol=protocol.value,
        settings=settings, image_size=image_size, device=runtime["device"],
        precision=precision and precision.value, workers=workers or runtime["workers"])
    _report(result, checkpoint, json_file)


def export(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option("--out", help="The file to write (.pt).",
                                      show_default=False)],
):
    """Write the online encoder as a torchvision ResNet state dict (no fc layer)."""
    from byol.eval.encoder import export_backbone

    config, step, builder = export_backbone(checkpoint, out)
    console.print(f"Wrote the online encoder of {config.model.arch} at step {step} to {out}.")
    console.print(f"Load it with: model = {builder}; "
                  f"model.load_state_dict(torch.load('{out}'), strict=False)  # fc stays "
                  "untrained")
