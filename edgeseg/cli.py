"""The Typer app: parse, call the library, render. No logic of its own."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from edgeseg.errors import EdgesegError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Segmentation from training to a fast INT8 model on an edge device.")
console = Console(stderr=True)
out_console = Console()
STATE = {"verbose": False}


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False) -> None:
    STATE["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def _iou_table(title: str, summary: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, value in summary["per_class_iou"].items():
        table.add_row(name, "-" if value is None else f"{value:.2f}")
    table.add_row("[bold]mIoU", f"[bold]{summary['miou']:.2f}")
    table.add_row("pixel acc", f"{summary['pixel_acc']:.2f}")
    return table


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/smoke.yaml")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<recipe name>)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from RUN/last.pt")] = False,
    qat: Annotated[bool | None, typer.Option("--qat/--no-qat", help="Force the QAT stage on or off")] = None,
    init: Annotated[Path | None, typer.Option("--init", help="Skip FP32: start QAT from this FP32 checkpoint")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="Data-parallel processes (torchrun)")] = 1,
) -> None:
    """Train FP32, then QAT when the recipe (or --qat) asks for it."""
    from edgeseg.config import load_recipe

    r = load_recipe(recipe, set_)
    run_dir = out or Path("runs") / r.name
    if nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}", "-m", "edgeseg", "train", str(recipe), "--out", str(run_dir)]
        cmd += [a for s in (set_ or []) for a in ("--set", s)] + (["--resume"] if resume else [])
        cmd += [] if qat is None else (["--qat"] if qat else ["--no-qat"])
        cmd += ["--init", str(init)] if init else []
        raise typer.Exit(subprocess.call(cmd))
    from edgeseg.train import fit

    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def callback(event: str, **info: Any) -> None:
            stage = info.get("stage", "")
            if event == "start":
                tasks[stage] = bar.add_task(f"train {stage}", total=info["total"], completed=info["done"], info="")
            elif event == "step":
                bar.update(tasks[stage], completed=info["it"], info=f"loss {info['loss']:.3f} lr {info['lr']:.2e} {info['img_s']:.1f} img/s")
            elif event == "eval":
                console.print(f"{stage} step {info['it']}: val mIoU {info['miou']:.2f}")

        results = fit(r, run_dir, resume=resume, qat=qat, init=init, callback=callback)
    for stage, res in results.items():
        out_console.print(f"{stage}: best val mIoU {res['best_miou']:.2f}")
    out_console.print(f"wrote {run_dir / 'best.pt'}")


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pt)")],
    data: Annotated[str | None, typer.Option("--data", help="Data root (default: the recipe's)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Data format (default: the recipe's)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split (default: the recipe's val split)")] = None,
    output_stride: Annotated[int | None, typer.Option("--output-stride", help="Evaluate at output stride 8/16/32")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON")] = None,
) -> None:
    """mIoU, pixel accuracy and per-class IoU of a checkpoint (PyTorch)."""
    from edgeseg.data.dataset import eval_dataset
    from edgeseg.fsutil import write_json
    from edgeseg.train.checkpoint import checkpoint_recipe, load_checkpoint, model_from_checkpoint
    from edgeseg.train.evaluate import evaluate

    c = load_checkpoint(ckpt)
    recipe = checkpoint_recipe(c)
    model = model_from_checkpoint(c, output_stride)
    ds = eval_dataset(recipe, split, data, fmt)
    with _progress() as bar:
        task = bar.add_task("eval", total=len(ds), info="")
        summary = evaluate(model, ds, progress=lambda i, n: bar.update(task, completed=i))
    summary["output_stride"] = output_stride or c["arch"]["output_stride"]
    summary["checkpoint"] = str(ckpt)
    out_console.print(_iou_table(f"{ckpt} @ OS{summary['output_stride']}", summary))
    if json_out:
        write_json(json_out, summary)


@app.command()
def predict(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pt)")],
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    out: Annotated[Path, typer.Option("--out", help="Folder for masks and overlays")] = Path("predictions"),
    output_stride: Annotated[int | None, typer.Option("--output-stride")] = None,
) -> None:
    """Write a coloured mask PNG and an overlay per image."""
    from edgeseg.predict import predict_files

    written = predict_files(ckpt, images, out, output_stride)
    out_console.print(f"wrote {len(written)} masks and overlays to {out}")


@app.command()
def info(
    source: Annotated[Path, typer.Argument(help="Recipe (.yaml) or checkpoint (.pt)")],
    input_size: Annotated[str | None, typer.Option("--input-size", help="HxW (default: the recipe's eval/crop size)")] = None,
) -> None:
    """Parameters and GMACs at each output stride."""
    from edgeseg.models.info import model_info

    rows = model_info(source, input_size)
    table = Table(title=f"{source}")
    for col in ("head", "OS", "input", "params (M)", "GMACs"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["head"], str(r["output_stride"]), r["input"], f"{r['params'] / 1e6:.3f}", f"{r['gmacs']:.3f}")
    out_console.print(table)


def main() -> None:
    """Entry point: EdgesegError -> one red line, exit code 2 (traceback with --verbose)."""
    start = time.perf_counter()
    try:
        app(standalone_mode=False)
    except EdgesegError as exc:
        if STATE["verbose"]:
            console.print_exception()
        from edgeseg.train.loop import Interrupted

        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(130 if isinstance(exc, Interrupted) else 2)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: nothing half-written was left behind", soft_wrap=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
    logging.getLogger(__name__).debug("done in %.1fs", time.perf_counter() - start)
