"""`byolctl eval ...` and `byolctl export`: judging and exporting a pretrained encoder."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from byol.config import PretrainConfig
from byol.errors import plural
from byol.eval.finetune import FinetuneSettings
from byol.eval.knn import KnnSettings
from byol.eval.linear import LinearSettings
from byol.eval.transfer import TransferSettings
from byolctl.errors import exits_cleanly
from byolctl.options import (
    Arch,
    DeviceOpt,
    JsonOpt,
    LogEveryOpt,
    PrecisionOpt,
    WorkersOpt,
    checked_flags,
    config_option,
    device_and_workers,
    given_settings,
    log_every_seconds,
    write_json,
)
from byolctl.render import console, print_error, print_warning, task_progress
from byolctl.tables import identifier_column, print_table

eval_app = typer.Typer(help="Evaluate a pretrained encoder by the paper's protocols: kNN, a "
                       "linear classifier, fine-tuning on a share of the labels, transfer to "
                       "other datasets.", short_help="Evaluate a pretrained encoder as the "
                       "paper does.", no_args_is_help=True)


class Protocol(str, Enum):
    full = "full"
    cached = "cached"


class ExportFormat(str, Enum):
    pt = "pt"
    safetensors = "safetensors"


CheckpointOpt = Annotated[Path, typer.Option(
    "--checkpoint", help="A pretraining checkpoint (.pt) or a run folder (its last.pt).",
    show_default=False)]
EncoderFileOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="A pretraining checkpoint (.pt) or a run folder (its last.pt); or a "
    "torchvision ResNet state dict (.pt or .safetensors, e.g. from byolctl export) with --arch.",
    show_default=False)]
EncoderArchOpt = Annotated[Optional[Arch], typer.Option(
    "--arch", metavar="<name>", help="The torchvision ResNet a state dict --checkpoint (or "
    f"--weights IMAGENET1K_V1) is for: {', '.join(Arch.__members__)}.", show_default=False)]
WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", metavar="<name>", help="Evaluate torchvision's pretrained weights instead, "
    "e.g. ResNet50_Weights.IMAGENET1K_V2 (from the torch hub cache, downloaded there if "
    "absent).", show_default=False)]
EvalDataOpt = Annotated[str, typer.Option(
    "--data", help="A folder with train/ and val/ (or test/), each <class>/<image>; or `demo`.")]
EvalImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", help="Image side in pixels [default: the pretraining size].",
    show_default=False)]


def _runtime(device, workers: int | None, image_size: int | None) -> dict[str, Any]:
    """Device and workers (see device_and_workers); UserError for an --image-size no run can
    use (pretraining's range). Under torchrun, joins the other processes, and only rank 0
    speaks."""
    from byol import distributed

    checked_flags(PretrainConfig, {"image_size": image_size})
    device, workers = device_and_workers(device, workers)
    console.quiet = not distributed.setup(device).is_main
    return {"device": device, "workers": workers}


def _run_with_progress(evaluate, log_every: float, **kwargs) -> dict[str, Any]:
    """Call an evaluation with a progress bar per task it reports (in a terminal; else a
    line every `log_every` seconds)."""
    with task_progress(log_every) as on_progress:
        return evaluate(on_progress=on_progress, **kwargs)


def _evaluated(result: dict[str, Any], checkpoint: Path | None) -> str:
    """What the result is of: the file (as the user named it) or the weights, their kind, and
    the step if known."""
    from byol.run_folder import checkpoint_file

    what = [result["source"]]
    if result["step"] is not None:
        what.append(f"step {result['step']}")
    if result["stripped_prefix"]:
        what.append(f"prefix {result['stripped_prefix']} stripped")
    named = checkpoint_file(checkpoint) if checkpoint is not None else result["weights"]
    return f"{named} ({', '.join(what)})"


def _report(result: dict[str, Any], checkpoint: Path | None, json_file: Path | None) -> None:
    """Print the result as a table, record it in the run folder, and write --json (rank 0
    alone, under torchrun)."""
    from byol import distributed
    from byol.eval.session import record_result
    from byol.run_folder import checkpoint_run_dir, holds_run

    if not distributed.current().is_main:
        return
    of = f"step {result['step']}" if result["step"] is not None else result["source"]
    how = {"knn": f"k={result.get('k')}", "linear": result.get("protocol"),
           "finetune": f"labels {result.get('labels')}"}[result["evaluation"]]
    title = f"{result['evaluation']} ({how}) - {result['arch']} {of} on {result['data']}"
    table = Table("metric", identifier_column("value"), title=title)
    table.add_row("top-1", f"{result['top1']:.2f}%")
    # With 5 classes or fewer every label is among the 5 best: say so rather than boast.
    table.add_row("top-5", f"{result['top5']:.2f}%" + (
        f" (always, with {plural(result['classes'], 'class')})" if result["classes"] <= 5 else ""))
    table.add_row("images", f"{result['train_images']} train, {result['val_images']} "
                            f"{result['val_split']}")
    if "labeled_images" in result:
        table.add_row("labeled", f"{result['labeled_images']} train images, "
                                 f"{result['epochs']} epochs")
    if result["skipped_images"]:
        table.add_row("skipped", plural(result["skipped_images"], "unreadable image"))
    processes = f" x {result['processes']} processes" if result["processes"] > 1 else ""
    table.add_row("time", f"{result['seconds']:.1f} s on {result['device']}{processes} "
                          f"({result['precision']})")
    table.add_row("encoder", _evaluated(result, checkpoint))
    print_table(table)
    if json_file:
        write_json(json_file, result)
        console.print(f"Wrote {json_file}")
    if checkpoint is None:  # torchvision's weights belong to no run
        return
    run_dir = checkpoint_run_dir(checkpoint)
    if holds_run(run_dir):  # a checkpoint copied out of its run has no folder to record in
        try:
            console.print(f"Recorded in {record_result(result, run_dir)}")
        except OSError as error:  # a read-only run folder: the numbers are still shown
            print_warning(f"could not record the result in {run_dir} "
                          f"({error.strerror or error}); it is only in the table above"
                          + (" and in --json." if json_file else "."))


@eval_app.command("knn", short_help="Weighted kNN accuracy of the frozen encoder's features.",
                  epilog="Example: byolctl eval knn --checkpoint runs/r50/last.pt "
                  "--data /datasets/imagenet")
@exits_cleanly
def knn(
    checkpoint: EncoderFileOpt = None,
    arch: EncoderArchOpt = None,
    weights: WeightsOpt = None,
    data: EvalDataOpt = "demo",
    k: Annotated[Optional[int], config_option(KnnSettings, "k")] = None,
    temperature: Annotated[Optional[float], config_option(KnnSettings, "temperature")] = None,
    batch_size: Annotated[Optional[int], config_option(KnnSettings, "batch_size")] = None,
    image_size: EvalImageSizeOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
    log_every: LogEveryOpt = None,
):
    """Weighted kNN accuracy of the frozen online encoder's features (top-1 and top-5).

    Center-crop features of the train split are the neighbours; the val split is classified.
    An exported encoder, another tool's ResNet state dict (--arch) or torchvision's weights
    (--weights) are evaluated the same way.
    """
    from byol.eval.run import evaluate_knn

    settings = given_settings(KnnSettings, locals())
    seconds = log_every_seconds(log_every)
    runtime = _runtime(device, workers, image_size)
    result = _run_with_progress(
        evaluate_knn, seconds, checkpoint=checkpoint, arch=arch and arch.value,
        weights=weights, data=data, k=settings.k,
        temperature=settings.temperature, batch_size=settings.batch_size,
        image_size=image_size, precision=precision and precision.value, **runtime)
    _report(result, checkpoint, json_file)


@eval_app.command("linear", short_help="Linear classification accuracy on the frozen encoder.",
                  epilog="Example: byolctl eval linear --checkpoint runs/r50/last.pt "
                  "--data /datasets/imagenet")
@exits_cleanly
def linear(
    checkpoint: EncoderFileOpt = None,
    arch: EncoderArchOpt = None,
    weights: WeightsOpt = None,
    data: EvalDataOpt = "demo",
    protocol: Annotated[Protocol, typer.Option(
        "--protocol", help="full: new crops and flips each epoch through the frozen encoder; "
        "cached: center-crop features once, then the classifier alone (fast).")] = Protocol.full,
    epochs: Annotated[Optional[int], config_option(LinearSettings, "epochs")] = None,
    batch_size: Annotated[Optional[int], config_option(LinearSettings, "batch_size")] = None,
    lr: Annotated[Optional[float], config_option(LinearSettings, "lr")] = None,
    image_size: EvalImageSizeOpt = None,
    seed: Annotated[Optional[int], config_option(LinearSettings, "seed")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an unfinished --protocol full evaluation of the same "
        "checkpoint, data and settings after its last finished epoch.")] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
    log_every: LogEveryOpt = None,
):
    """Linear classification accuracy on the frozen online encoder (top-1 and top-5).

    A linear layer is trained on the train split's features (BatchNorm in eval mode) and
    tested on the val split's center crops. It takes any encoder that eval knn takes.
    """
    from byol.eval.run import evaluate_linear, linear_state_file

    settings = given_settings(LinearSettings, locals())
    seconds = log_every_seconds(log_every)
    runtime = _runtime(device, workers, image_size)
    unfinished = linear_state_file(checkpoint)
    if protocol == Protocol.full and not resume and unfinished and unfinished.is_file():
        console.print(f"{unfinished} holds an unfinished evaluation; starting over (--resume "
                      "would continue it).")
    try:
        result = _run_with_progress(
            evaluate_linear, seconds, checkpoint=checkpoint, arch=arch and arch.value,
            weights=weights, data=data, protocol=protocol.value,
            settings=settings, image_size=image_size,
            precision=precision and precision.value, resume=resume, **runtime)
    except KeyboardInterrupt:
        if protocol == Protocol.full and unfinished and unfinished.is_file():
            print_error(f"Interrupted; {unfinished} keeps the finished epochs, and the same "
                        "command with --resume continues after them.")
            raise typer.Exit(1) from None
        raise
    _report(result, checkpoint, json_file)


@eval_app.command("finetune", short_help="Accuracy after fine-tuning on 1%, 10% or all labels.",
                  epilog="Example: byolctl eval finetune --checkpoint runs/r50/last.pt "
                  "--data /datasets/imagenet --labels 1%")
@exits_cleanly
def finetune(
    checkpoint: EncoderFileOpt = None,
    arch: EncoderArchOpt = None,
    weights: WeightsOpt = None,
    data: EvalDataOpt = "demo",
    labels: Annotated[Optional[str], typer.Option(
        "--labels", metavar="<share>", help="The labeled images: a share of each class (1%, "
        "10%), a number per class (13), or a file listing them (one file name per line, as "
        "the ImageNet 1% and 10% lists) [default: all].", show_default=False)] = None,
    epochs: Annotated[Optional[int], config_option(FinetuneSettings, "epochs")] = None,
    batch_size: Annotated[Optional[int], config_option(FinetuneSettings, "batch_size")] = None,
    lr: Annotated[Optional[float], config_option(FinetuneSettings, "lr")] = None,
    weight_decay: Annotated[Optional[float], config_option(
        FinetuneSettings, "weight_decay")] = None,
    seed: Annotated[Optional[int], config_option(FinetuneSettings, "seed")] = None,
    image_size: EvalImageSizeOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="The fine-tuning's folder: its labeled-image list, state and result "
        "[default: finetune-<labels>-seed<seed> in the checkpoint's run folder].",
        show_default=False)] = None,
    save: Annotated[Optional[Path], typer.Option(
        "--save", help="Write the fine-tuned network (a torchvision ResNet state dict with its "
        "fc; .pt or .safetensors).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an unfinished fine-tuning in --out's folder after its last "
        "finished epoch.")] = False,
    compile: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="torch.compile the network being fine-tuned [default: "
        "on with a GPU].", show_default=False)] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
    log_every: LogEveryOpt = None,
):
    """Accuracy after fine-tuning the whole encoder with a linear classifier (top-1, top-5).

    The paper's semi-supervised protocol: the encoder and a new classifier train together on a
    class-balanced part of the train split's labels (random crops and flips, BatchNorm
    updated), then classify the val split's center crops. Without --labels, every label (the
    fine-tuned transfer protocol). It takes any encoder that eval knn takes.
    """
    from byol.eval.finetune import evaluate_finetune

    settings = given_settings(FinetuneSettings, locals())
    seconds = log_every_seconds(log_every)
    runtime = _runtime(device, workers, image_size)
    try:
        result = _run_with_progress(
            evaluate_finetune, seconds, checkpoint=checkpoint, arch=arch and arch.value,
            weights=weights, data=data, labels=labels, settings=settings,
            image_size=image_size, precision=precision and precision.value,
            compile=runtime["device"] == "cuda" if compile is None else compile, out=out,
            resume=resume, save=save, **runtime)
    except KeyboardInterrupt:
        print_error("Interrupted; the fine-tuning's folder keeps its finished epochs, and the "
                    "same command with --resume continues after them.")
        raise typer.Exit(1) from None
    _report(result, checkpoint, json_file)
    console.print(f"Labeled images: {result['labeled_images_file']}")
    if "saved" in result:
        console.print(f"Fine-tuned network: {result['saved']}")


@eval_app.command("transfer", short_help="kNN and linear accuracy on other datasets, one row each.",
                  epilog="Example: byolctl eval transfer --checkpoint runs/r50/last.pt "
                  "/data/flowers102 /data/pets")
@exits_cleanly
def transfer(
    datasets: Annotated[list[str], typer.Argument(
        help="Dataset folders (each with train/ and val/ or test/), or one YAML file of "
        "`name: folder` lines.", show_default=False)],
    checkpoint: EncoderFileOpt = None,
    arch: EncoderArchOpt = None,
    weights: WeightsOpt = None,
    k: Annotated[Optional[int], config_option(TransferSettings, "k")] = None,
    held_out: Annotated[Optional[float], config_option(TransferSettings, "held_out")] = None,
    iterations: Annotated[Optional[int], config_option(TransferSettings, "iterations")] = None,
    seed: Annotated[Optional[int], config_option(TransferSettings, "seed")] = None,
    batch_size: Annotated[Optional[int], config_option(TransferSettings, "batch_size")] = None,
    image_size: EvalImageSizeOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="The suite's folder, where transfer.jsonl gets a line per finished "
        "dataset [default: transfer/ in the checkpoint's run folder].",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip the datasets --out's transfer.jsonl holds for this encoder and "
        "these settings.")] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
    log_every: LogEveryOpt = None,
):
    """kNN and linear classification accuracy of the frozen encoder on other datasets.

    The paper's transfer protocol: for each dataset, center-crop features of its train split;
    a kNN classifier, and a logistic regression whose L2 penalty is chosen on a held-out part of
    train, then refit on all of it; both tested on the val (or test) split. One table, a row
    per dataset and their mean.
    """
    from byol.eval.transfer import evaluate_transfer

    settings = given_settings(TransferSettings, locals())
    seconds = log_every_seconds(log_every)
    runtime = _runtime(device, workers, image_size)

    def finished(result: dict[str, Any]) -> None:
        done = "recorded earlier" if result.get("resumed") else f"{result['seconds']:.0f} s"
        console.print(f"{result['dataset']}: kNN top-1 {result['knn_top1']:.2f}%, linear "
                      f"top-1 {result['linear_top1']:.2f}% ({done})")

    try:
        results = _run_with_progress(
            evaluate_transfer, seconds, checkpoint=checkpoint, datasets=datasets,
            arch=arch and arch.value, weights=weights, settings=settings,
            image_size=image_size, precision=precision and precision.value, out=out,
            resume=resume, on_result=finished, **runtime)
    except KeyboardInterrupt:
        print_error("Interrupted; the datasets already finished are recorded, and the same "
                    "command with --resume skips them.")
        raise typer.Exit(1) from None
    _report_transfer(results, checkpoint, json_file)


def _report_transfer(results: list[dict[str, Any]], checkpoint: Path | None,
                     json_file: Path | None) -> None:
    """Print a row per dataset and their mean, and write --json (rank 0 alone)."""
    from byol import distributed

    if not distributed.current().is_main:
        return
    table = Table(identifier_column("dataset"), "classes", "train", "tested", "kNN top-1",
                  "linear top-1", "linear top-5", "L2 penalty",
                  title=f"transfer - {results[0]['arch']} {_evaluated(results[0], checkpoint)}")
    for result in results:
        table.add_row(result["dataset"], str(result["classes"]), str(result["train_images"]),
                      str(result["val_images"]), f"{result['knn_top1']:.2f}%",
                      f"{result['linear_top1']:.2f}%", f"{result['linear_top5']:.2f}%",
                      f"{result['penalty']:.2g}")
    mean = {key: sum(r[key] for r in results) / len(results)
            for key in ("knn_top1", "linear_top1", "linear_top5")}
    table.add_row("mean", "", "", "", f"{mean['knn_top1']:.2f}%", f"{mean['linear_top1']:.2f}%",
                  f"{mean['linear_top5']:.2f}%", "")
    print_table(table)
    if json_file:
        write_json(json_file, {"datasets": results, "mean": mean})
        console.print(f"Wrote {json_file}")


def export(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option("--out", help="The file to write (.pt or .safetensors).",
                                      show_default=False)],
    file_format: Annotated[Optional[ExportFormat], typer.Option(
        "--format", help="pt (torch.save) or safetensors (no pickle; records the "
        "architecture) [default: safetensors for a .safetensors --out, else pt].",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it exists (never the checkpoint itself).")] = False,
):
    """Write the online encoder as a torchvision ResNet state dict (no fc layer)."""
    from byol.eval.encoder import export_backbone

    chosen = _export_format(file_format, out)
    config, step, builder = export_backbone(checkpoint, out, replace=force,
                                            file_format=chosen.value)
    console.print(f"Wrote the online encoder of {config.model.arch} at step {step} to {out} "
                  f"({chosen.value}).")
    console.print("Load it with:\n" + "\n".join(
        f"    {line}" for line in [*builder, *_load_lines(out, chosen)]), highlight=False)


def _export_format(given: ExportFormat | None, out: Path) -> ExportFormat:
    """--format, or the one --out's suffix names; UserError when they disagree."""
    from byol.errors import UserError

    named = ExportFormat.safetensors if out.suffix == ".safetensors" else None
    if out.suffix in (".pt", ".pth"):
        named = ExportFormat.pt
    if given is not None and named is not None and given != named:
        raise UserError(f"--format {given.value} does not write a {out.suffix} file; name "
                        f"--out {out.with_suffix('.' + given.value)}, or leave out --format.")
    return given or named or ExportFormat.pt


def _load_lines(out: Path, file_format: ExportFormat) -> list[str]:
    """Python lines that load the export into `model`."""
    if file_format == ExportFormat.safetensors:
        return ["from safetensors.torch import load_file",
                f"model.load_state_dict(load_file({str(out)!r}), strict=False)  # only fc is "
                "missing"]
    return [f"model.load_state_dict(torch.load({str(out)!r}, weights_only=True), "
            "strict=False)  # only fc is missing"]
