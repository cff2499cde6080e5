"""The `pipeline` command line: one thin command per stage.

Each command maps its options onto one library call and prints a short summary. Library code
raises `PipelineError`s; `_run` turns them into one line on stderr and the error's exit code, so a
user mistake never shows a traceback. Heavy libraries are imported by the stages, not here, so
`pipeline --help` stays fast.

Unlike the rest of the package, this module's annotations are evaluated where they are written
(no `from __future__ import annotations`): Typer reads every command's annotations each time the
command line starts, and as strings it evaluated each of them twice: most of the time it took
to build the command tree before any command ran (docs/benchmarks.md).
"""

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline import __version__, defaults
from pipeline.choices import Backend, Engine, Precision, Style
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.classify import Summary

app = typer.Typer(
    name="pipeline",
    help="Train, export, verify and bulk-classify handwritten digits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Show where a dataset is found, or write sample digit images.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(
    help="Benchmarks that print figures (artifacts, classify throughput, scans, augmentation)."
)
app.add_typer(bench_app, name="bench")
# Off a terminal (logs, CI) Rich would wrap tables at 80 columns; parity tables need more.
console = Console(width=None if sys.stdout.isatty() else 160, emoji=False)  # a path is printed as it is
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 240, emoji=False)

# Exit code of `classify --fail-on-error` when the run finished but some files were unreadable.
FAILED_FILES_EXIT = 10
# Exit code of `classify --fail-on-review` when the run finished with rows marked for review.
REVIEW_ROWS_EXIT = 12

T = TypeVar("T")
_PRECISION = Precision(defaults.PRECISION)


def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a stage; a PipelineError becomes one clear line and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except PipelineError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(code=130) from None


def _fail(exc: PipelineError) -> typer.Exit:
    """Print the error's one line; the caller raises the returned Exit with the error's code."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=exc.exit_code)


def _version(value: bool) -> None:
    if value:
        console.print(f"pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Train, export, verify and bulk-classify handwritten digits."""


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help=f"Folder with the dataset (else ${defaults.DATA_DIR_ENV}, ./data, ...)."),
]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="mnist or fashion-mnist.")]


# --- data -------------------------------------------------------------------------------------


@data_app.callback(invoke_without_command=True)
def data_cli(ctx: typer.Context, dataset: DatasetOpt = defaults.DATASET, data_dir: DataDir = None) -> None:
    """Print where the dataset was found, its checksum status and counts per class."""
    if ctx.invoked_subcommand is not None:
        return
    from pipeline import data

    summary = _run(data.summarize, dataset, data_dir)
    loc = summary.location
    console.print(
        f"dataset  {loc.dataset.value}\nfound in {loc.source} ({loc.kind})\nchecksum {loc.checksum}"
    )
    table = Table("class", "train", "test")
    for digit, (tr, te) in enumerate(zip(summary.train_counts, summary.test_counts, strict=True)):
        table.add_row(data.CLASS_NAMES[loc.dataset][digit], str(tr), str(te))
    table.add_row("total", str(sum(summary.train_counts)), str(sum(summary.test_counts)))
    console.print(table)


@data_app.command("samples")
def samples_cli(
    out: Annotated[Path, typer.Argument(help="Folder to write the images into.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many test digits.")] = 100,
    style: Annotated[
        Style,
        typer.Option(
            "--style", help="mnist (28x28 PNG), scan (ink on paper, JPEG) or form (in a box, on a line)."
        ),
    ] = Style.MNIST,
    start: Annotated[int, typer.Option("--start", min=0, help="First test-set index.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the scan rendering.")] = defaults.SEED,
    dataset: DatasetOpt = defaults.DATASET,
    data_dir: DataDir = None,
) -> None:
    """Write test digits as image files (with labels.csv) to try `pipeline classify` on."""
    from pipeline import samples

    result = _run(samples.write_samples, out, count, style, dataset, data_dir, seed, start)
    console.print(
        f"wrote {result.count} {style.value} digits to {result.folder} (labels in {result.labels_csv.name})"
    )


# --- train ------------------------------------------------------------------------------------


@app.command("train")
def train_cli(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Architecture: conv2d, flat, ...")
    ] = defaults.MODEL,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs (seed: 100).")] = defaults.EPOCHS,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = defaults.BATCH_SIZE,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0)] = defaults.LEARNING_RATE,
    seed: Annotated[int, typer.Option("--seed")] = defaults.SEED,
    split_seed: Annotated[
        int | None,
        typer.Option(
            "--split-seed", help="Which images are held out (default: --seed); share it across members."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=20, help="Use only the first N training images.")
    ] = None,
    validation_split: Annotated[
        float, typer.Option("--validation-split", min=0.0, max=0.9)
    ] = defaults.VALIDATION_SPLIT,
    backend: Annotated[
        Backend, typer.Option("--backend", help="auto: a backend that sees a GPU, else TensorFlow.")
    ] = Backend.AUTO,
    deskew: Annotated[bool, typer.Option("--deskew/--no-deskew", help="Train on deskewed digits.")] = False,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment", help="Random affine + elastic augmentation (default: model's recipe)."
        ),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option("--target-accuracy", help="Stop once validation accuracy reaches this (e.g. 0.99)."),
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option("--precision", help="auto: mixed_bfloat16 on a GPU, else float32."),
    ] = _PRECISION,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="bncnn or bncnn-s in a lean JAX loop (augmentation on the device, no checkpoints)."
        ),
    ] = False,
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            help="Distil from this .keras (bncnn, or an ensemble of them) with --fast: the student "
            "learns its probabilities.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default runs/<model>-<time>).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    dataset: DatasetOpt = defaults.DATASET,
    data_dir: DataDir = None,
) -> None:
    """Train a model on the CPU or a GPU; writes a run folder with model.keras and metrics."""
    from pipeline import train

    config = train.TrainConfig(
        model=model, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        limit=limit, validation_split=validation_split, dataset=dataset, backend=backend.value,
        deskew=deskew, target_accuracy=target_accuracy, augment=augment, precision=precision.value,
        fast=fast, split_seed=split_seed, teacher=str(teacher) if teacher else None,
    )  # fmt: skip
    if not resume:
        _run(config.check)
    result = _run(train.train, config, out, data_dir, resume, sys.stderr.isatty() or sys.stdout.isatty())
    m = result.metrics
    table = Table(title=f"run {result.run_dir}")
    table.add_column("")
    table.add_column("")
    rows = [
        ("model", f"{m['model']} ({m['parameters']:,} parameters)"),
        ("backend / device", f"{m['backend']} / {m['device']}"),
        ("epochs (best)", f"{m['epochs']} ({m['best_epoch']})"),
        ("test accuracy", f"{m['test_accuracy']:.2%}"),
        ("train / wall time", f"{m['train_seconds']:.1f} s / {m['wall_seconds']:.1f} s"),
    ]
    if m.get("target"):
        t = m["target"]
        rows.append(
            ("target reached", f"epoch {t['epoch']}, {t['seconds_from_process_start']:.1f} s from start")
        )
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command("ensemble")
def ensemble_cli(
    members: Annotated[
        list[Path], typer.Argument(help="Run folders (or .keras files) of trained softmax models.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder for the ensemble.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Model name (default <model>-x<N>, e.g. bncnn-x3).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Average trained models into one model (a run folder that export and verify take as is)."""
    from pipeline.train.ensemble import ensemble

    result = _run(ensemble, members, out, name, data_dir)
    m = result.metrics
    each = ", ".join(f"{f['test_accuracy']:.2%}" for f in m["members"] if f.get("test_accuracy") is not None)
    console.print(
        f"{m['model']}: {len(m['members'])} members ({each}), {m['parameters']:,} parameters, "
        f"test accuracy {m['test_accuracy']:.2%}; wrote {result.run_dir}/model.keras"
    )


@app.command("calibrate")
def calibrate_cli(
    model: Annotated[Path, typer.Argument(help="A trained .keras (a run's model.keras or an ensemble's).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder for the calibrated model.")],
    fit_on: Annotated[
        Path | None,
        typer.Option(
            "--fit-on", help="Fit on this stand-in's held-out images (same recipe), fold into MODEL."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Fit a temperature on the images the run held out and fold it into the model's weights, so
    every artifact exported from it returns calibrated probabilities (not int8 calibration)."""
    from pipeline.train.calibrate import calibrate

    r = _run(calibrate, model, out, data_dir, fit_on)
    table = Table("test set", "ECE", "NLL", "accuracy", "mean confidence", title=f"T = {r.temperature:.4f}")
    for name, s in (("before", r.before), ("after", r.after)):
        table.add_row(
            name, f"{s['ece']:.4f}", f"{s['nll']:.4f}", f"{s['accuracy']:.2%}", f"{s['mean_confidence']:.4f}"
        )
    console.print(table)
    console.print(f"fitted on {r.held_out:,} held-out images; wrote {r.model} and {r.reliability_png}")


# --- evaluate ---------------------------------------------------------------------------------


@app.command("evaluate")
def evaluate_cli(
    model: Annotated[Path, typer.Argument(help="A .keras, .onnx or .tflite file.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the figures (default: beside the model; ./release-reports for the release).",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N test images.")] = None,
    deskew: Annotated[
        bool | None, typer.Option("--deskew/--no-deskew", help="Default: as the model's run was trained.")
    ] = None,
    dataset: DatasetOpt = defaults.DATASET,
    data_dir: DataDir = None,
) -> None:
    """Accuracy (overall, per class), calibration (ECE, reliability diagram), confusion, examples."""
    from pipeline.evaluate import evaluate

    ev = _run(evaluate, model, out, dataset, data_dir, limit, deskew)
    table = Table("digit", "accuracy", title=f"{model.name}: {ev.accuracy:.2%} on {ev.images} test images")
    for d, acc in enumerate(ev.per_class):
        table.add_row(str(d), f"{acc:.2%}")
    console.print(table)
    review = Table(
        "confidence below", "rows flagged", "errors caught", "accuracy of the rest",
        title="manual review of low-confidence rows",
    )  # fmt: skip
    for r in ev.review:
        kept = "-" if r.accuracy_kept is None else f"{r.accuracy_kept:.2%}"
        review.add_row(f"{r.threshold:g}", f"{r.flagged:.2%}", f"{r.errors_flagged} of {r.errors}", kept)
    console.print(review)
    console.print(f"expected calibration error (ECE, {defaults.ECE_BINS} bins): {ev.ece:.4f}")
    console.print(f"wrote {ev.confusion_png}, {ev.examples_png}, {ev.reliability_png}, {ev.metrics_json}")


# --- export and verify ------------------------------------------------------------------------


@app.command("export")
def export_cli(
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="The .keras file (default: newest runs/*/model.keras)."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="onnx, tflite or all (comma-separated ok).")
    ] = "all",
    quantize: Annotated[
        str,
        typer.Option("--quantize", "-q", help="none, dynamic, int8, float16 or all (comma-separated ok)."),
    ] = "all",
    out: Annotated[
        Path, typer.Option("--out", help="Folder for artifacts and manifest.json (never the release's).")
    ] = defaults.EXPORT_DIR,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="Training images used to calibrate int8.")
    ] = defaults.CALIBRATION_SAMPLES,
    integer_io: Annotated[
        bool, typer.Option("--integer-io", help="int8 TFLite with int8 input and output (microcontrollers).")
    ] = False,
    micro: Annotated[
        bool,
        typer.Option(
            "--micro",
            help="Microcontroller target: int8 TFLite with int8 I/O plus a C source and header (arena, "
            "operators, scales); needs the [micro] extra.",
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Convert a Keras model to ONNX and TFLite, quantize, and record each file in the manifest."""
    from pipeline import export

    formats = _run(export.parse_formats, "tflite" if micro and fmt == "all" else fmt)
    quants = _run(export.parse_quantizations, "int8" if micro and quantize == "all" else quantize)
    model_path = model if model is not None else _run(export.default_model)

    def log(r: export.Exported) -> None:
        console.print(f"wrote {r.path}  {r.bytes / 1024:,.0f} KiB  {r.seconds:.1f} s", highlight=False)
        if r.micro is not None:
            m = r.micro
            console.print(
                f"wrote {r.path.parent / m.c_source} and {m.header}: flash {m.flash_bytes:,} B, "
                f"arena {m.arena_bytes:,} B, {m.macs:,} MACs, operators {', '.join(m.operators)}",
                highlight=False,
            )

    results = _run(
        export.export, model_path, formats, quants, out, calibration_samples, integer_io, data_dir, log=log,
        micro=micro,
    )  # fmt: skip
    console.print(f"{len(results)} artifact(s) from {model_path} recorded in {out / defaults.MANIFEST_NAME}")


@app.command("verify")
def verify_cli(
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help=f"manifest.json written by export (default: ./{defaults.EXPORT_DIR}, else the release).",
        ),
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-dir",
            help=f"Where parity.json/.md go (default: beside the manifest; ./{defaults.RELEASE_REPORT_DIR} "
            "for the release).",
        ),
    ] = None,
    float_min_agreement: Annotated[
        float,
        typer.Option("--float-min-agreement", help="float32/float16: minimum top-1 agreement (fraction)."),
    ] = defaults.FLOAT_MIN_AGREEMENT,
    float_max_delta: Annotated[
        float, typer.Option("--float-max-delta", help="float32/float16: max |accuracy delta| in points.")
    ] = defaults.FLOAT_MAX_ACCURACY_DELTA,
    quant_max_delta: Annotated[
        float, typer.Option("--quant-max-delta", help="dynamic/int8: max |accuracy delta| in points.")
    ] = defaults.QUANT_MAX_ACCURACY_DELTA,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N test images.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Prove every exported artifact classifies like its Keras model; non-zero exit on any failure."""
    from pipeline import verify
    from pipeline.errors import ParityError

    tol = verify.Tolerances(float_min_agreement, float_max_delta, quant_max_delta)
    try:
        report = verify.verify(manifest, tol, data_dir, limit, report_dir=report_dir)
    except ParityError as exc:
        if exc.report is not None:
            _print_parity(exc.report)
        raise _fail(exc) from None
    except PipelineError as exc:
        raise _fail(exc) from None
    _print_parity(report)
    console.print(
        f"all {len(report.results)} artifacts of {report.manifest} pass; "
        f"wrote {report.json_path} and {report.md_path}"
    )


def _print_parity(report: object) -> None:
    from pipeline import verify

    assert isinstance(report, verify.ParityReport)
    table = Table(*verify.HEADERS, title=f"parity on {report.images} test images")
    for row in verify.table_rows(report):
        style = None if row[-1] == "ok" else "red"
        table.add_row(*row, style=style)
    console.print(table)


# --- classify ---------------------------------------------------------------------------------


@app.command("classify")
def classify_cli(
    folder: Annotated[Path, typer.Argument(help="Folder of digit images (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write.")] = Path("results.csv"),
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Any .onnx/.tflite/.keras (default: best int8 ONNX).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run into the same --out.")
    ] = False,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Add columns p0..p9.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive")] = True,
    extensions: Annotated[
        str, typer.Option("--extensions", help="Comma-separated file extensions to include.")
    ] = ",".join(defaults.IMAGE_EXTENSIONS),
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "--num-workers",
            min=1,
            help="Local: decoding processes (default: one per core). Ray: inference actors.",
        ),
    ] = None,
    engine: Annotated[
        Engine, typer.Option("--engine", help="local (processes) or ray (Ray Data job).")
    ] = Engine.LOCAL,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to join (default: start a local Ray).")
    ] = None,
    deskew: Annotated[
        bool | None, typer.Option("--deskew/--no-deskew", help="Default: as the model was trained.")
    ] = None,
    review_rows: Annotated[
        bool,
        typer.Option("--review/--no-review", help="Mark rows that are not one digit, or unsure, for review."),
    ] = True,
    review_below: Annotated[
        float,
        typer.Option(
            "--review-below", min=0.0, max=1.0, help="Review rows whose top probability is under this."
        ),
    ] = defaults.REVIEW_BELOW,
    fail_on_review: Annotated[
        bool, typer.Option("--fail-on-review", help=f"Exit {REVIEW_ROWS_EXIT} if any row needs review.")
    ] = False,
    fail_on_error: Annotated[
        bool, typer.Option("--fail-on-error", help=f"Exit {FAILED_FILES_EXIT} if any file could not be read.")
    ] = False,
    review_queue: Annotated[
        Path | None,
        typer.Option("--review-queue", help="Also write review.csv and review.html into this folder."),
    ] = None,
    screened: Annotated[
        bool,
        typer.Option(
            "--screen/--no-screen",
            help="Let the release's small screen answer in front of the default model where it is sure.",
        ),
    ] = True,
) -> None:
    """Classify every digit image in a folder into a CSV (one row per file, bad files included)."""
    from pipeline import classify

    exts = tuple(e.strip().lower().lstrip(".") for e in extensions.split(",") if e.strip())
    with _classify_progress() as progress:
        summary = _run(
            classify.classify, folder, out, model, resume, probabilities, recursive, exts, workers,
            deskew=deskew, progress=progress, engine=engine, address=address, review_rows=review_rows,
            review_below=review_below, review_queue=review_queue, screened=screened,
        )  # fmt: skip
    reviewed = sum(summary.review.values())
    table = Table(title=f"classified {folder} -> {summary.out}", show_header=False)
    for key, value in (
        ("model", str(summary.model)),
        *(
            [("screened by", f"{summary.screen.name} (answered {summary.screened:,} alone)")]
            if summary.screen
            else []
        ),
        (
            "files",
            f"{summary.files:,}"
            + (f" ({summary.resumed:,} from the interrupted run)" if summary.resumed else ""),
        ),
        ("classified", f"{summary.classified:,}"),
        (
            "for review",
            f"{reviewed:,}"
            + (
                " (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(summary.review.items())) + ")"
                if reviewed
                else ""
            ),
        ),
        ("blank", f"{summary.blank:,}"),
        ("errors", f"{summary.errors:,}"),
        ("per digit", "  ".join(f"{d}:{n}" for d, n in enumerate(summary.per_digit))),
        ("elapsed", f"{summary.seconds:.1f} s"),
        ("images / s", f"{summary.images_per_second:,.0f}"),
        *([("inference", _inference_line(summary))] if engine is Engine.LOCAL else []),
    ):
        table.add_row(key, value)
    console.print(table)
    if summary.queue is not None:
        _print_queue(summary.queue)
    if fail_on_error and summary.errors:
        err_console.print(
            f"[bold red]error:[/] {summary.errors} file(s) could not be classified (see {escape(str(out))})"
        )
        raise typer.Exit(code=FAILED_FILES_EXIT)
    if fail_on_review and reviewed:
        err_console.print(f"[bold red]review:[/] {reviewed} row(s) need a person (see {escape(str(out))})")
        raise typer.Exit(code=REVIEW_ROWS_EXIT)


@contextlib.contextmanager
def _classify_progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar for classify on a terminal (its callback), or None where there is none: a
    batch job's log gets the summary only, and does not wait for rich's progress module."""
    if not err_console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[bold]classify", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), "{task.fields[rate]}",
        console=err_console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=None, rate="")

        def progress(advance: int, total: int) -> None:
            bar.update(task, advance=advance, total=total)
            speed = bar.tasks[0].speed
            if speed:
                bar.update(task, rate=f"{speed:,.0f} images/s")

        yield progress


def _inference_line(summary: "Summary") -> str:
    """Where the local engine ran the model: in its workers, or here on some threads."""
    if summary.inference_workers:
        return f"in {summary.inference_workers} workers, 1 thread each"
    return f"here, {summary.inference_threads} thread{'s' if summary.inference_threads > 1 else ''}"


def _print_queue(written: Any) -> None:
    shown = f" ({written.shown:,} shown in the page)" if written.shown < written.rows else ""
    console.print(
        f"review queue: {written.rows:,} rows{shown} -> {escape(str(written.html))}", highlight=False
    )


@app.command("review")
def review_cli(
    results: Annotated[Path, typer.Argument(help="Results CSV written by pipeline classify.")],
    folder: Annotated[
        Path, typer.Argument(help="The folder classify ran on (the CSV's paths are relative).")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "-o", help="Where review.csv and review.html go.")
    ] = Path("review"),
    below: Annotated[
        float | None,
        typer.Option(
            "--below", min=0.0, max=1.0, help="Also queue rows whose top probability is under this."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Rows shown in review.html, least confident first.")
    ] = defaults.REVIEW_PAGE_ROWS,
    deskew: Annotated[
        bool, typer.Option("--deskew/--no-deskew", help="As classify ran (the shipped models: no deskew).")
    ] = False,
) -> None:
    """Write the review queue of a finished run: review.csv and a self-contained review.html."""
    from pipeline.classify import queue

    _print_queue(_run(queue.write_queue, results, folder, out_dir, below=below, limit=limit, deskew=deskew))


# --- bench ------------------------------------------------------------------------------------


@bench_app.command("artifacts")
def bench_artifacts_cli(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Artifacts (default: all in the manifest).")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Default: ./exports, else the release.")
    ] = None,
) -> None:
    """Per artifact: size, test accuracy, latency at batch 1 and 256 on this CPU."""
    from pipeline import bench
    from pipeline import manifest as manifests

    if not paths:
        recorded = _run(manifests.read, manifest or _run(manifests.default_manifest))
        paths = [recorded.file(entry) for entry in recorded.entries]
    results = _run(bench.bench_artifacts, paths)
    table = Table(
        "artifact", "size", "accuracy", "ms @1", "ms @256", "images/s @256", title="artifacts on this CPU"
    )
    for r in results:
        table.add_row(
            str(r.path), f"{r.bytes / 1024:,.0f} KiB", f"{r.accuracy:.2%}", f"{r.ms_batch1:.3f}",
            f"{r.ms_batch256:.2f}", f"{256_000 / r.ms_batch256:,.0f}",
        )  # fmt: skip
    console.print(table)


BenchModel = Annotated[Path | None, typer.Option("--model", "-m", help="Default: the default model.")]
BenchFolder = Annotated[Path | None, typer.Option("--folder", help="Where to generate the PNGs (reused).")]


def _print_runs(results: list[Any], title: str) -> None:
    """One table for the process-level benchmarks (classify, engines)."""
    table = Table("run", "images", "seconds", "images/s", "peak memory", title=title)
    for r in results:
        rate = f"{r.per_second:,.0f}" if r.images else "-"
        table.add_row(r.name, f"{r.images:,}", f"{r.seconds:.2f}", rate, f"{r.peak_mib:,.0f} MiB")
    console.print(table)


BenchModels = Annotated[
    list[Path] | None,
    typer.Option("--model", "-m", help="Model to classify with (repeatable). Default: the default model."),
]


BenchRounds = Annotated[
    int,
    typer.Option("--rounds", min=1, help="Rounds of ceiling then classify; the median share is reported."),
]


def _print_classify_runs(runs: list[Any], title: str) -> None:
    """The decode-only ceiling and each classify run: ratio, accuracy, calibration (ECE), memory,
    and every round's share where there were several."""
    table = Table(
        "run", "images", "seconds", "images/s", "of ceiling", "accuracy", "ECE", "peak memory", "rounds",
        title=title,
    )  # fmt: skip
    for r in runs:
        accuracy = f"{r.accuracy:.2%}" if r.accuracy is not None else "-"
        ece = f"{r.ece:.4f}" if r.ece is not None else "-"
        rounds = " ".join(f"{share:.0%}" for share in r.shares) or "-"
        table.add_row(
            r.run.name, f"{r.run.images:,}", f"{r.run.seconds:.2f}", f"{r.run.per_second:,.0f}",
            f"{r.share_of_ceiling:.0%}", accuracy, ece, f"{r.run.peak_mib:,.0f} MiB", rounds,
        )  # fmt: skip
    console.print(table)
    if any(len(r.shares) > 1 for r in runs):
        console.print(
            "each round: the decode-only ceiling, then classify; a run's share is of the ceiling just "
            "before it, and the row is the round with the median share (the ceiling's row: the median "
            "of its runs); peak memory is from one more run of each, sampled and not timed"
        )


def _bench_models(models: list[Path] | None) -> list[Path]:
    from pipeline import manifest

    if not models:
        return [_run(manifest.choose_model, None).path]
    return [_run(manifest.choose_model, m).path for m in models]


@bench_app.command("classify")
def bench_classify_cli(
    model: BenchModels = None,
    count: Annotated[
        int, typer.Option("--count", min=100, help="PNG digits in the generated folder.")
    ] = 50_000,
    folder: BenchFolder = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1)] = None,
    naive: Annotated[bool, typer.Option("--naive/--no-naive", help="Also time the naive loop.")] = True,
    rounds: BenchRounds = defaults.BENCH_ROUNDS,
) -> None:
    """Decode-only ceiling, naive loop and `pipeline classify` on one folder of 28x28 PNG digits:
    images/s, share of the ceiling, accuracy, peak memory."""
    from pipeline import bench

    runs = _run(bench.bench_classify, _bench_models(model), count, folder, workers, naive, rounds)
    _print_classify_runs(runs, f"classify on {count:,} PNG digits")


@bench_app.command("engines")
def bench_engines_cli(
    model: BenchModel = None,
    count: Annotated[
        int, typer.Option("--count", min=100, help="PNG digits in the generated folder.")
    ] = 20_000,
    folder: BenchFolder = None,
) -> None:
    """Local engine against the Ray engine on one folder (same CSV checked), and Ray's start-up."""
    from pipeline import bench, manifest

    choice = _run(manifest.choose_model, model)
    results = _run(bench.bench_engines, choice.path, count, folder)
    _print_runs(results, f"engines on {count:,} PNG digits")


@bench_app.command("scans")
def bench_scans_cli(
    model: BenchModels = None,
    count: Annotated[int, typer.Option("--count", min=10, help="Test digits rendered as scans.")] = 2000,
    start: Annotated[int, typer.Option("--start", min=0)] = 0,
    style: Annotated[Style, typer.Option("--style", help="scan (ink on paper) or form (boxes, lines).")] = (
        Style.SCAN
    ),
    seed: Annotated[int, typer.Option("--seed", help="Seed for the rendering.")] = defaults.SEED,
    folder: Annotated[
        Path | None, typer.Option("--folder", help="Where to render the files (reused).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1)] = None,
    rounds: BenchRounds = defaults.BENCH_ROUNDS,
) -> None:
    """Decode-only ceiling and `pipeline classify` on MNIST test digits rendered as scans or form
    fields (ink on paper, blur, JPEG): images/s, share of the ceiling, accuracy, peak memory."""
    from pipeline import bench

    models = _bench_models(model)
    r = _run(bench.bench_scans, models, count, start, seed, style.value, folder, workers, rounds)
    _print_classify_runs(r.runs, f"classify on {count:,} rendered {style.value}s")
    for path, clean, without in zip(models, r.clean_accuracy, r.without_lines_accuracy, strict=True):
        console.print(
            f"{path.name}: {without:.2%} without form-line erasure; "
            f"{clean:.2%} on the same digits as clean MNIST"
        )


@bench_app.command("review")
def bench_review_cli(
    model: BenchModel = None,
    count: Annotated[int, typer.Option("--count", min=10, help="Images of each kind.")] = 2000,
    review_below: Annotated[float, typer.Option("--review-below", min=0.0, max=1.0)] = defaults.REVIEW_BELOW,
    screened: Annotated[bool, typer.Option("--screen/--no-screen", help="As classify's option.")] = True,
) -> None:
    """Rows classify sends to review: real digits against pairs, letters, scribbles, clothing."""
    from pipeline import bench, manifest

    choice = _run(manifest.choose_model, model)
    r = _run(bench.bench_review, choice.path, count, review_below=review_below, screened=screened)
    reasons = ["several_digits", "not_a_digit", "low_confidence", "blank"]
    title = f"review with {choice.path.name}" + (f", screened by {r.screen.name}" if r.screen else "")
    table = Table("images", "count", "flagged", *reasons, title=title)
    for s in r.sets:
        table.add_row(
            s.name,
            f"{s.images:,}",
            f"{s.flagged:.1%}",
            *(f"{s.reasons.get(k, 0) / s.images:.1%}" for k in reasons),
        )
    console.print(table)
    if r.auroc is not None and r.fpr_at_95 is not None:
        console.print(
            f"MNIST against Fashion-MNIST (distance from a digit): AUROC {r.auroc:.4f}, "
            f"{r.fpr_at_95:.2%} of clothing passes where 95% of digits pass"
        )
    else:
        console.print("Fashion-MNIST test images not found: no AUROC (see the README's data section)")


@bench_app.command("photo")
def bench_photo_cli(
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Best of this many runs.")] = 5,
) -> None:
    """A 12-megapixel photo of one digit: its full decode time against classify's preprocessing."""
    from pipeline import bench

    r = _run(bench.bench_photo, repeats=repeats)
    console.print(
        f"{r.width}x{r.height} photo: decode {r.decode_ms:.1f} ms, classify preprocessing "
        f"{r.classify_ms:.1f} ms ({r.ratio:.2f}x its decode time)"
    )


@bench_app.command("augment")
def bench_augment_cli(
    count: Annotated[int, typer.Option("--count", min=128, help="Training digits in the epoch.")] = 60_000,
    workers: Annotated[
        list[int] | None, typer.Option("--workers", min=1, help="Thread counts to time (repeatable).")
    ] = None,
) -> None:
    """Augmented training images per second the host supplies, per number of threads."""
    from pipeline import bench

    results = _run(bench.bench_augment, count, defaults.BATCH_SIZE, workers)
    table = Table("threads", "images", "seconds", "images/s", title="augmentation on this CPU")
    for r in results:
        table.add_row(str(r.workers), f"{r.images:,}", f"{r.seconds:.2f}", f"{r.per_second:,.0f}")
    console.print(table)
    console.print(f"training uses {defaults.AUGMENT_WORKERS} thread(s) on this machine")


def main() -> None:
    """Entry point: like `app()`, but usage errors are one line instead of a help panel.

    numpy's BLAS is kept to one thread for every command, unless the user set it: OpenBLAS starts
    a thread per core when numpy is imported, and they spin, waiting for work, long enough to take
    a core from the first moments of every run (classify's decoding workers are forked then). No
    command gives numpy's BLAS heavy work: TensorFlow and onnxruntime have their own threads, and
    classify keeps it on one thread anyway (threadpoolctl, once numpy is loaded). Set before any
    command imports numpy, which reads it once.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err_console.print("interrupted")
        sys.exit(130)
    except ImportError as exc:  # this package incomplete (its compiled part not built): one line
        if not (exc.name or "").startswith("pipeline"):
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.TyperException as exc:
        message = exc.format_message()
        if message:  # an empty message is `pipeline` with no command: help was already shown
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(
                f"[bold red]error:[/] {escape(message + hint)}", highlight=False, soft_wrap=True
            )
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def run() -> None:
    """The `pipeline` command (and `python -m pipeline`): `main`, then the process ends at once.

    A finished command has closed and renamed its outputs; what the interpreter would still do is
    tear down every module (onnxruntime's, OpenCV's, numpy's), time that every run paid and no
    output needs (docs/benchmarks.md). So the exit handlers run (multiprocessing's,
    Ray's shutdown, logging's flush), the standard streams are flushed, and the process exits. An
    uncaught exception, a thread still running, or a profiler or tracer watching (cProfile writes
    its figures after the command returns) takes the ordinary exit instead.
    """
    try:
        main()
        code: str | int | None = 0
    except SystemExit as exc:
        code = exc.code
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more goes
            stream.flush()
    os._exit(code)
