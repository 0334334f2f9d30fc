"""`tlkit` command line: parsing and printing only; the work is in the Python API."""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import Any, Callable

import click

from tlkit import lingering, tfimport, tflogs
from tlkit.formats import FORMATS, QUANTIZE_MODES  # the registry only: no TensorFlow import

tflogs.install()  # TensorFlow's start-up lines stay off the terminal (TLKIT_TF_LOGS=1 / --tf-logs: shown)
tfimport.around_import("gc", tfimport.without_gc)  # a second off a command's start-up (see without_gc)

UNSAFE_HELP = "Load a run's .keras file even if it carries Python code (Lambda layers): only for files you trust."
TTA_HELP = "Test-time augmentation: average each image's and its mirror image's probabilities (masks flipped back)."


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors print one line and exit 2; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tlkit.errors import TlkitError

        try:
            return fn(*args, **kwargs)
        except TlkitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)
        except OSError as exc:  # a full disk anywhere (h5py, TF file layer): one line, not a traceback
            from tlkit.runs import is_disk_full

            if not is_disk_full(exc):
                raise
            click.echo(f"error: no space left on the device ({exc.filename or exc}): free some space and run again", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlkit")
@click.option("--tf-logs", is_flag=True, help="Show TensorFlow's own start-up and log lines (or set TLKIT_TF_LOGS=1).")
def cli(tf_logs: bool) -> None:
    """Transfer learning for image models: finetune, evaluate, export, predict, extract, report, inspect."""
    if tf_logs:
        tflogs.show_tf_logs()


@cli.command()
@click.argument("recipe", required=False)
@click.option("--data", help="Data source: a folder of class subfolders, tfds:NAME or builtin:shapes.")
@click.option("--backbone", help="Backbone name (see `tlkit backbones`; `scratch` is the from-scratch stack).")
@click.option("--weights", help="imagenet, none, or a path to a weights file.")
@click.option("--epochs", type=int, help="Epochs of every stage.")
@click.option("--batch-size", type=int)
@click.option("--input-size", help="Square input side in pixels, or auto (from the images' sizes).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any recipe field, e.g. train.stages.0.learning_rate=0.01 (repeatable).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Backbone option (model.options), e.g. alpha=0.25 (repeatable).")
@click.option("--run-dir", type=click.Path(), help="Run directory (default runs/NAME-TIMESTAMP).")
@click.option("--resume", type=click.Path(), help="Continue an interrupted run from its directory.")
@click.option("--no-export", is_flag=True, help="Skip the SavedModel export at the end.")
@click.option("--no-report", is_flag=True, help="Skip the pictures and index.html in RUN_DIR/report/.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summaries.")
@click.option("--rescan", is_flag=True, help="Check every image file again (default: only new or changed ones).")
@_handle_errors
def finetune(recipe: str | None, sets: tuple[str, ...], options: tuple[str, ...], run_dir: str | None, resume: str | None, no_export: bool, no_report: bool, quiet: bool, rescan: bool, **flags: Any) -> None:
    """Train a model from RECIPE (a YAML file or a shipped name).

    Without RECIPE: with --data, the pretrained own_images default; without, the offline quickstart.
    """
    from tlkit.recipe import parse_override
    from tlkit.train import finetune as run

    overrides = dict(parse_override(s) for s in sets)
    overrides.update((f"model.options.{k}", v) for k, v in map(parse_override, options))
    result = run(
        recipe,
        overrides=overrides or None,
        run_dir=run_dir,
        resume=resume,
        quiet=quiet,
        export=False if no_export else None,
        report=not no_report,
        rescan=rescan,
        **flags,
    )
    if not result.chief:  # another worker of a multi-worker run: the chief reports
        return
    from tlkit.tasks import get_task

    click.echo(f"run directory: {result.run_dir}")
    if result.export_dir:
        click.echo(f"export: {result.export_dir}")
    headline = get_task(result.task).headline
    click.echo(f"{result.metrics['split']} {headline}: {result.metrics[headline]:.4f}  ({result.seconds:.1f} s)")
    from tlkit.runs import selection_note

    note = selection_note(result.metrics)
    if note:
        click.echo(note)


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--data", help="Data source to evaluate on (default: the run's own).")
@click.option("--split", help="train, val or test (default: test if there is one, else val).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--unsafe", is_flag=True, help=UNSAFE_HELP)
@click.option("--tta", is_flag=True, help=TTA_HELP)
@_handle_errors
def evaluate(target: str, data: str | None, split: str | None, as_json: bool, unsafe: bool, tta: bool) -> None:
    """Metrics of a run directory or an export (TARGET) on a split."""
    from tlkit.evaluation import evaluate as run

    metrics = run(target, data=data, split=split, unsafe=unsafe, tta=tta)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    from tlkit.targets import resolve_target
    from tlkit.tasks import get_task

    click.echo(f"split {metrics['split']}: {metrics['num_examples']} images" + (", test-time flips averaged" if metrics.get("tta") else ""))
    for line in get_task(resolve_target(target, ("run", "export")).task_name()).format_metrics(metrics):
        click.echo(line)
    from tlkit.runs import selection_note

    note = selection_note(metrics)
    if note:
        click.echo(note)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(), help="Model folder (default saved_models/NAME[-FORMAT[-QUANT]]); the version goes under it.")
@click.option("--version", "version", type=int, help="Version number (default: next free).")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="savedmodel", show_default=True)
@click.option("--quantize", type=click.Choice(list(QUANTIZE_MODES)), default="none", show_default=True, help="TFLite only.")
@click.option("--integer-io", is_flag=True, help="With --quantize int8: uint8 input and output, integer kernels only.")
@click.option("--calibration-images", type=int, default=200, show_default=True, help="int8: training images to calibrate on.")
@click.option(
    "--bias-correction/--no-bias-correction",
    default=True,
    show_default=True,
    help="int8: take the weight rounding's mean shift out of each layer's bias (measured on the calibration images).",
)
@click.option("--float-convs", type=int, default=3, show_default=True, help="int8 with float I/O: the first N convolutions stay float (0: all int8).")
@click.option("--data", help="Data source for the check and calibration images (default: the run's own).")
@click.option("--tta", is_flag=True, help="SavedModel: serve the mean of each image's and its mirror image's probabilities (recorded in metadata.json).")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--unsafe", is_flag=True, help=UNSAFE_HELP)
@_handle_errors
def export(run_dir: str, out: str | None, version: int | None, fmt: str, quantize: str, integer_io: bool, calibration_images: int, bias_correction: bool, float_convs: int, data: str | None, tta: bool, quiet: bool, unsafe: bool) -> None:
    """Export RUN_DIR for a runtime: OUT/VERSION with the model, labels.txt, metadata.json and README.md.

    Written only after the runtime's own engine (TensorFlow, LiteRT, onnxruntime)
    has loaded it and agreed with the Keras model on images of the run's data.
    """
    from tlkit.exporting import export_run

    export_run(
        run_dir, out=out, version=version, quiet=quiet, format=fmt, quantize=quantize,
        integer_io=integer_io, calibration_images=calibration_images, data=data, unsafe=unsafe,
        bias_correction=bias_correction, tta=tta, float_convs=float_convs,
    )


@cli.command()
@click.argument("targets", metavar="RUN_OR_EXPORT...", nargs=-1, required=True, type=click.Path())
@click.option("--formats", "fmts", multiple=True, help="FORMAT or FORMAT:QUANT, comma-separated or repeated (default: all), e.g. tflite:int8,onnx.")
@click.option("--data", help="Data source to evaluate on (default: the run's own).")
@click.option("--split", help="train, val or test (default: test if there is one, else val).")
@click.option("--single", type=int, default=50, show_default=True, help="One-image calls timed per row (p50/p95).")
@click.option("--out", type=click.Path(), help="Keep the exports of a run here (default: a temporary folder).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of the table.")
@_handle_errors
def benchmark(targets: tuple[str, ...], fmts: tuple[str, ...], data: str | None, split: str | None, single: int, out: str | None, as_json: bool) -> None:
    """Size, metric, agreement with float, latency and throughput of a run's Keras model and exports (or of EXPORTs)."""
    from tlkit.benchmarking import benchmark as run, format_table

    rows = run(list(targets), formats=list(fmts) or None, data=data, split=split, single=single, out=out, quiet=as_json)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        for row in rows:
            if row.get("warning"):
                click.echo(f"warning: {row['format']} {row['quantize']} {row['warning']}", err=True)
        return
    click.echo(format_table(rows))


@cli.command()
@click.argument("export_path", metavar="EXPORT", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=3, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {path, predictions}.")
@click.option("--out", type=click.Path(), help="Segmentation: folder for mask PNGs (class indices) and colour overlays.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write one row per image to this CSV (path, answer, error) instead of printing lines.")
@click.option("--tta", is_flag=True, help=TTA_HELP)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--unsafe", is_flag=True, help=UNSAFE_HELP)
@_handle_errors
def predict(export_path: str, images: tuple[str, ...], top_k: int, as_json: bool, out: str | None, csv_path: str | None, tta: bool, batch_size: int, unsafe: bool) -> None:
    """Classify (or segment) IMAGES (files, or folders: every image inside) with EXPORT: a SavedModel, a .tflite
    or an .onnx file, or a run directory. A file that is not an image gets its reason; the exit code is then 1."""
    from tlkit.prediction import Predictor, format_result

    predictor = Predictor(export_path, top_k=top_k, batch_size=batch_size, out=out, tta=tta, unsafe=unsafe)
    rows = predictor.results(images, progress=sys.stderr.isatty() and (bool(csv_path) or as_json or not sys.stdout.isatty()))
    if csv_path:
        rows = predictor.to_csv(rows, csv_path)
    images_seen = errors = 0
    if as_json:  # streamed: one entry per line as it comes
        click.echo("[")
    for row in rows:
        if as_json:
            click.echo(("," if images_seen else "") + json.dumps(row))
        elif not csv_path:
            click.echo(format_result(row, predictor.task.name))
        images_seen, errors = images_seen + 1, errors + ("error" in row)
    if as_json:
        click.echo("]")
    if csv_path:
        click.echo(f"wrote {images_seen} rows to {csv_path} ({errors} unreadable)", err=as_json)
    if errors:
        sys.exit(1)


@cli.command()
@click.argument("source")
@click.option("--data", required=True, help="Images to extract: a folder, tfds:NAME or builtin:shapes.")
@click.option("--split", help="One split only (default: every split, recorded in `splits`).")
@click.option("--layer", help="A backbone layer name (default: the backbone output).")
@click.option("--pool", type=click.Choice(["avg", "max", "none"]), default="avg", show_default=True)
@click.option("--out", type=click.Path(), default="features.npz", show_default=True)
@click.option("--weights", help="For a backbone name: imagenet, none or a weights file.")
@click.option("--input-size", type=int, help="For a backbone name: square input side.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Backbone constructor option, e.g. alpha=0.25.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--unsafe", is_flag=True, help=UNSAFE_HELP)
@_handle_errors
def extract(source: str, data: str, split: str | None, layer: str | None, pool: str, out: str, weights: str | None, input_size: int | None, options: tuple[str, ...], batch_size: int, unsafe: bool) -> None:
    """Write features of DATA's images to a .npz: SOURCE is a run directory, an export or a backbone name."""
    from tlkit.extraction import extract as run
    from tlkit.recipe import parse_override

    result = run(
        source, data, split=split, layer=layer, pool=pool, out=out, weights=weights,
        input_size=input_size, options=dict(parse_override(o) for o in options), batch_size=batch_size, unsafe=unsafe,
    )
    n, d = result["features"].shape
    click.echo(f"wrote {n} x {d} features to {out}")


@cli.command()
@click.argument("data")
@click.option("--backbone", help="Features from this backbone (default: the recipe's, else mobilenet_v2).")
@click.option("--weights", help="For --backbone: imagenet, none or a weights file.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Backbone constructor option, e.g. alpha=0.25.")
@click.option("--model", type=click.Path(), help="Features from a run's model instead (a run directory).")
@click.option("--input-size", type=int, help="Square input side of the backbone.")
@click.option("--task", help="Read DATA as this task's data (default classification; segmentation for images/ + masks/).")
@click.option("--out", type=click.Path(), help="Write index.html, findings.csv and exclude.txt to this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print {summary, findings} as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--unsafe", is_flag=True, help=UNSAFE_HELP)
@_handle_errors
def doctor(data: str, options: tuple[str, ...], as_json: bool, quiet: bool, **flags: Any) -> None:
    """Find what is wrong with DATA (a folder, tfds:NAME or a recipe) before training on it."""
    from tlkit.diagnosis.doctor import doctor as run
    from tlkit.diagnosis.output import summary_lines
    from tlkit.recipe import parse_override

    result = run(data, options=dict(parse_override(o) for o in options) or None, progress=not (quiet or as_json), **flags)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for line in summary_lines(result):
        click.echo(line)
    if result.out is not None:
        click.echo(f"wrote {result.out}/index.html, findings.csv, exclude.txt (use as data.exclude)")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--max-images", type=int, default=256, show_default=True, help="Validation images predicted for predictions.png.")
@_handle_errors
def report(run_dir: str, max_images: int) -> None:
    """(Re)write RUN_DIR/report/: curves, confusion matrix, predictions and index.html."""
    from tlkit.report import write_report

    click.echo(f"report: {write_report(run_dir, max_images=max_images)}")


@cli.command()
@click.argument("target")
@click.option("--image", type=click.Path(), help="Draw --layer's feature maps for this image (to --out).")
@click.option("--layer", help="Layer name (as in the table; 'backbone/NAME' or NAME) for --image, or Grad-CAM's layer.")
@click.option("--out", type=click.Path(), help="PNG to write (default feature_maps.png, filters.png or gradcam.png).")
@click.option("--filters", is_flag=True, help="Draw the first convolution's kernels.")
@click.option("--gradcam", "gradcam_image", type=click.Path(), metavar="IMG", help="Write a Grad-CAM heatmap over IMG.")
@click.option("--class", "class_name", help="Grad-CAM class: a label name (run directories) or an index; default: the top prediction.")
@click.option("--weights", help="For a backbone name or recipe: imagenet, none (default for a name) or a weights file.")
@click.option("--input-size", type=int, help="For a backbone name or recipe: square input side.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Backbone constructor option, e.g. alpha=0.25.")
@click.option("--classes", "num_classes", type=int, help="For a recipe: classes of the head (default: counted from its data folder).")
@click.option("--unsafe", is_flag=True, help=UNSAFE_HELP)
@_handle_errors
def inspect(target: str, image: str | None, layer: str | None, out: str | None, filters: bool, gradcam_image: str | None, class_name: str | None, weights: str | None, input_size: int | None, options: tuple[str, ...], num_classes: int | None, unsafe: bool) -> None:
    """Layers of TARGET (a backbone name, a recipe, a run directory or a .keras file): shapes, parameters,
    receptive fields, multiply-adds; or pictures of feature maps, kernels and Grad-CAM."""
    from tlkit.inspection import inspect_model
    from tlkit.recipe import parse_override

    result = inspect_model(
        target, image=image, layer=layer, out=out, filters=filters, gradcam_image=gradcam_image, class_name=class_name,
        weights=weights, input_size=input_size, options=dict(parse_override(o) for o in options), num_classes=num_classes,
        unsafe=unsafe,
    )
    if "table" in result:
        click.echo(result["description"])
        click.echo(result["table"])
    if "label" in result:
        click.echo(f"Grad-CAM: {result['label']} (p={result['probability']:.3f}) at layer {result['layer']}")
    for path in result["written"]:
        click.echo(f"wrote {path}")


@cli.command()
@click.option("--no-params", is_flag=True, help="Leave the parameter column empty.")
@click.option("--count", is_flag=True, help="Build each model to count its parameters (slow) instead of the registry's figures.")
@_handle_errors
def backbones(no_params: bool, count: bool) -> None:
    """List the registered backbones with input sizes and parameter counts (at the default size, without the head)."""
    from tlkit.models.backbones import count_params, list_backbones

    click.echo(f"{'name':<20} {'input':>5} {'min':>4} {'params':>12}  options")
    for spec in list_backbones():
        n = None if no_params else count_params(spec.name) if count or spec.params is None else spec.params
        params = "" if n is None else f"{n:,}"
        click.echo(f"{spec.name:<20} {spec.default_size:>5} {spec.min_size:>4} {params:>12}  {', '.join(spec.options) or '-'}")


@cli.command("recipe")
@click.argument("recipe", required=False)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@click.option("--reference", is_flag=True, help="Print the table of every recipe field instead.")
@_handle_errors
def show_recipe(recipe: str | None, sets: tuple[str, ...], reference: bool) -> None:
    """Print a recipe resolved with defaults and overrides (or the field reference)."""
    from tlkit.tasks import load_recipe, recipe_reference

    if reference:
        click.echo(recipe_reference())
        return
    click.echo(load_recipe(recipe or "quickstart", list(sets)).to_yaml(), nl=False)


@cli.command()
@click.argument("folder", required=False)
@click.option("--clear", is_flag=True, help="Remove the entries (all, or FOLDER's): the next run checks and decodes again.")
@click.option("--force", is_flag=True, help="With --clear: also decoded copies written in the last 10 minutes.")
@_handle_errors
def cache(folder: str | None, clear: bool, force: bool) -> None:
    """Show what tlkit remembers between runs (scans, decoded copies), for every data folder or FOLDER; --clear it."""
    from tlkit.data.cachefolder import cache_entries, clear_cache
    from tlkit.data.decoded import cache_home, store_budget

    if force and not clear:
        raise click.UsageError("--force goes with --clear: `tlkit cache --clear --force [FOLDER]`")
    if clear:
        removed, kept = clear_cache(folder, force=force)
        click.echo(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({_mb(sum(e.bytes for e in removed))})")
        for entry in kept:
            click.echo(f"kept {entry.path}: written in the last 10 minutes, a run may be reading it (--force removes it)")
        return
    entries = cache_entries(folder)
    decoded = sum(e.bytes for e in entries if e.kind == "decoded")
    click.echo(f"{cache_home()}: decoded copies {_mb(decoded)} of {_mb(store_budget())} (TLKIT_DECODED_CACHE_MB)")
    if not entries:
        click.echo("nothing remembered" + (f" for {folder}" if folder else ""))
        return
    click.echo(f"{'kind':<8} {'px':>4} {'images':>8} {'size':>10}  {'written':<16}  folder")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.written))
        px = str(e.size) if e.size else "-"
        click.echo(f"{e.kind:<8} {px:>4} {e.images:>8} {_mb(e.bytes):>10}  {when:<16}  {e.folder or '(not recorded) ' + e.path.name}")


def _mb(n: int) -> str:
    return f"{n / 1024**2:.1f} MB"


@cli.command("local-workers", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("workers", type=click.IntRange(min=1))
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
@_handle_errors
def local_workers(workers: int, args: tuple[str, ...]) -> None:
    """Run `tlkit ARGS` as WORKERS processes of one multi-worker cluster on this machine (TF_CONFIG on loopback ports).

    Example: tlkit local-workers 2 finetune RECIPE --set runtime.strategy=multi_worker
    """
    from tlkit.workers import run_local_workers

    sys.exit(run_local_workers(workers, list(args)))


def main() -> None:
    try:
        cli(prog_name="tlkit")
    except SystemExit as done:
        lingering.skip_teardown(done.code)  # a worker's distributed iterators: their teardown can stall for seconds
        raise


if __name__ == "__main__":
    main()
