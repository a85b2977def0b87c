"""The hospital's commands: ``csfl site check`` before joining, ``csfl predict`` after.

Typed with typer; every heavy package (torch, MONAI, nibabel) is imported inside the
command that needs it, so that ``csfl --help`` answers at once. :mod:`csfl`
puts these commands into ``csfl`` with :func:`add_commands`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.cli import fail, user_errors

site_app = typer.Typer(
    help="A hospital site's data: check it before joining.", no_args_is_help=True
)


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


def predict(
    bundle: Annotated[Path, typer.Argument(help="A model bundle folder (manifest.json).")],
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A CT .nii.gz, a folder of them, or a DICOM CT series folder.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="OUT.nii.gz (or OUT.dcm for --format seg/rtstruct) for one input, "
            "a folder for many NIfTI inputs.",
        ),
    ],
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: CUDA if any).")
    ] = None,
    overlap: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Sliding-window overlap.")
    ] = 0.25,
    merge: Annotated[
        str | None,
        typer.Option(
            help="Merge rule: confidence, highest_probability or last_decoder "
            "(default: the bundle's)."
        ),
    ] = None,
    gating: Annotated[
        bool, typer.Option(help="Silence each decoder's claims outside its domain.")
    ] = True,
    maps: Annotated[
        Path | None,
        typer.Option(help="Also write each decoder's probability, confidence, anomaly here."),
    ] = None,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="nifti (label map), seg (DICOM Segmentation) or rtstruct (RT Structure "
            "Set); seg and rtstruct need a DICOM series input.",
        ),
    ] = "nifti",
    series: Annotated[
        str | None,
        typer.Option(help="The SeriesInstanceUID to read when the folder holds several."),
    ] = None,
    roi_names: Annotated[
        str,
        typer.Option(
            help="rtstruct ROI names: vocabulary (ours) or tg263 (AAPM TG-263's where one "
            "has the same meaning; the others keep ours)."
        ),
    ] = "vocabulary",
    creator: Annotated[
        str | None,
        typer.Option(
            help="seg Content Creator's Name, a DICOM person name such as Doe^Jane "
            "(default: csfl^continual-segment-fl)."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto (bf16 where the GPU or CPU computes it, else fp32), fp32 or bf16 "
            "(default: the training default, auto)."
        ),
    ] = None,
) -> None:
    """Segment every structure the bundle knows, in one pass per CT.

    Writes the label map on the input's exact grid, plus its label table as JSON
    (``.labels.json``) and colour tables for 3D Slicer (``.ctbl``) and ITK-SNAP
    (``.itksnap.txt``). Overlapping decoders are merged by the anomaly-aware confidence
    rule unless ``--merge`` names another. A DICOM CT series folder is read with its
    orientation, spacing and rescale from the headers; its prediction can also be written
    as a DICOM SEG or an RT Structure Set referring to the source series.
    """
    from core.bundle import load_bundle
    from core.device import DEFAULT_PRECISION, check_precision, pick_device
    from core.dicom.output import (
        DicomNaming,
        OutputFormat,
        check_format,
        check_input,
        reads_as_dicom,
    )
    from core.dicom.seg import CONTENT_CREATOR
    from core.dicom.tg263 import RoiNames
    from core.inference import plan_outputs, predict_files

    formats = [f.value for f in OutputFormat]
    if output_format not in formats:
        fail(f"--format {output_format!r}: expected one of {', '.join(formats)}")
    schemes = [n.value for n in RoiNames]
    if roi_names not in schemes:
        fail(f"--roi-names {roi_names!r}: expected one of {', '.join(schemes)}")
    chosen = OutputFormat(output_format)
    torch_device = pick_device(device)
    with user_errors():
        naming = DicomNaming(CONTENT_CREATOR if creator is None else creator, RoiNames(roi_names))
        chosen_precision = check_precision(precision or DEFAULT_PRECISION)
        check_input(input_path)
        check_format(chosen, input_path)
        if maps is not None and reads_as_dicom(input_path):
            raise ValueError(
                f"--maps: {input_path} is a DICOM series; maps are written for NIfTI input only"
            )
        loaded = load_bundle(bundle, torch_device)
        settings = dataclasses.replace(loaded.merge, rule=merge or loaded.merge.rule, gating=gating)
        if reads_as_dicom(input_path):
            from core.dicom.predict import predict_series

            written = predict_series(
                loaded,
                input_path,
                output,
                chosen,
                series,
                torch_device,
                overlap,
                settings,
                naming,
                chosen_precision,
            )
            for path in written:
                typer.echo(f"wrote {path}")
            return
        inputs, outputs, prefix = plan_outputs(input_path, output)
        written = predict_files(
            loaded,
            inputs,
            outputs,
            prefix,
            torch_device,
            sys.stderr.isatty(),
            overlap,
            settings,
            maps,
            chosen_precision,
        )
    for path in written:
        typer.echo(f"wrote {path}")


def add_commands(app: typer.Typer) -> None:
    """Add ``site check`` and ``predict`` to ``app``."""
    app.add_typer(site_app, name="site")
    app.command()(predict)
