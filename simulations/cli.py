"""The ``csfl`` command line: thin commands over the packages, heavy imports inside each.

It lives in ``simulations`` because that package sits on top of the dependency graph
(``core`` <- ``client``, ``server`` <- ``simulations``) and may call all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="continual-segment-fl: federated continual segmentation of whole-body CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
site_app = typer.Typer(
    help="A hospital site's data: check it before joining.", no_args_is_help=True
)
app.add_typer(site_app, name="site")


@site_app.command("check")
def site_check(
    data_dir: Annotated[
        Path, typer.Argument(help="The site's data folder (one or more datasets).")
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report to this JSON file.")
    ] = None,
) -> None:
    """Find the datasets in DATA_DIR, read every case and report every problem.

    Reads nnU-Net v2 raw, Medical Segmentation Decathlon and TotalSegmentator layouts,
    either DATA_DIR itself or each of its sub-folders. Exits 1 if any problem is an error.
    """
    from core.data.check import check_site, format_report
    from core.io import atomic_write_json

    report = check_site(data_dir, progress=sys.stderr.isatty())
    typer.echo(format_report(report))
    if json_out is not None:
        atomic_write_json(json_out, report.to_json())
        typer.echo(f"Report written to {json_out}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def phantoms(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset into.")],
    cases: Annotated[int, typer.Option(min=1, help="Number of synthetic patients.")] = 4,
    size: Annotated[int, typer.Option(min=32, help="Voxels per side of each volume.")] = 48,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
) -> None:
    """Write synthetic abdominal CT phantoms as an nnU-Net v2 raw dataset."""
    from simulations.phantoms import write_demo_dataset

    dataset = write_demo_dataset(out, n_cases=cases, size=size, seed=seed)
    typer.echo(
        f"Wrote {len(dataset.cases)} case(s) of {size}^3 voxels to {dataset.root} "
        f"(structures: {', '.join(dataset.labels.structures)})"
    )


if __name__ == "__main__":
    app()
