"""nnU-Net v2's own predictor on the same hospital-size CT, for ``csfl profile --scale``.

TotalSegmentator's users run nnU-Net v2's predictor; this is the side-by-side for
``csfl predict``. The model is the one a user would have if nnU-Net had been trained on
the same task: a ``3d_fullres`` plan whose U-Net has the scenario plan's widths, patch and
spacing and one output per structure of its tasks (150 for ``wholebody143``), with random
weights (speed and memory do not depend on what a network has learnt). Two ways to run
it, each measured by :func:`simulations.benchmarks.network_profile.measure_prediction` in
its own process:

- ``nnunet``: ``nnUNetPredictor.predict_from_files_sequential`` on the CT as it is, what
  ``nnUNetv2_predict`` does in one process: nnU-Net resamples the CT to the plan's spacing
  and the logits of every class back to the CT's grid before the arg-max;
- ``nnunet_resampled``: as TotalSegmentator runs it, the CT resampled to the plan's
  spacing first (``nibabel.processing``, third order, as its images), nnU-Net at that
  spacing, the label map resampled back to the CT's grid (nearest neighbour).

The network is built by nnU-Net itself from the plan and handed to
``manual_initialization``: no checkpoint is written or unpickled. ``nnunetv2`` is an
optional dependency: ``CSFL_EXTRAS=nnunet bash scripts/setup.sh``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

CONFIGURATION = "3d_fullres"
INSTALL = "CSFL_EXTRAS=nnunet bash scripts/setup.sh"
APPROACHES = ("nnunet", "nnunet_resampled")


def require_nnunet() -> None:
    """Refuse, in one line, where ``nnunetv2`` is not installed.

    Raises:
        ValueError: naming the command that installs it.
    """
    if importlib.util.find_spec("nnunetv2") is None:
        raise ValueError(f"nnunetv2 is not installed here: {INSTALL}")


def write_model(scenario: str, folder: Path) -> Path:
    """An nnU-Net model folder (``plans.json``, ``dataset.json``) for the scenario's plan.

    Returns:
        ``folder``.
    """
    from simulations.scenario import load_scenario

    plan = load_scenario(scenario).plan
    structures = sorted({s for task in plan.tasks for s in task.structures})
    widths = list(plan.encoder.widths)
    stages = len(widths)
    # nnU-Net's axes are the image's axes after transpose_forward (identity here)
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": widths,
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
            "n_conv_per_stage": [2] * stages,
            "n_conv_per_stage_decoder": [2] * (stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    data_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    seg_kwargs = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    spacing = [float(s) for s in plan.preprocessing.spacing_mm]
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(plan.patch),
        "median_image_size_in_voxels": list(plan.patch),
        "spacing": spacing,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": data_kwargs,
        "resampling_fn_seg_kwargs": seg_kwargs,
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": data_kwargs | {"order": 1},
        "architecture": architecture,
        "batch_dice": False,
    }
    plans = {
        "dataset_name": f"Dataset999_{scenario}",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": list(plan.patch),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "mean": 40.0,
                "median": 40.0,
                "std": 150.0,
                "min": -1024.0,
                "max": 3000.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 1500.0,
            }
        },
    }
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0} | {name: i + 1 for i, name in enumerate(structures)},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return folder


def _predictor(model: Path) -> Any:
    """nnU-Net's predictor for the model folder, its network built from the plan."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((model / "plans.json").read_text(encoding="utf-8")))
    dataset = json.loads((model / "dataset.json").read_text(encoding="utf-8"))
    configuration = plans.get_configuration(CONFIGURATION)
    labels = plans.get_label_manager(dataset)
    network = nnUNetTrainer.build_network_architecture(
        plans, configuration, 1, labels.num_segmentation_heads, enable_deep_supervision=False
    ).eval()
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,  # csfl predicts without test-time mirroring too
        perform_everything_on_device=False,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network, plans, configuration, [network.state_dict()], dataset, "nnUNetTrainer", None
    )
    return predictor


def predict(approach: str, model: Path, ct: Path, out: Path) -> Path:
    """Segment ``ct`` with the model folder by one of :data:`APPROACHES`; the label map."""
    predictor = _predictor(model)
    if approach == "nnunet":
        predictor.predict_from_files_sequential([[str(ct)]], [str(out / "ct")], False, True)
        return out / "ct.nii.gz"
    import nibabel as nib
    from nibabel.processing import resample_from_to, resample_to_output

    spacing = predictor.configuration_manager.spacing
    image = nib.load(ct)
    resampled = resample_to_output(image, spacing, order=3, cval=-1024.0)
    nib.save(resampled, out / "resampled_0000.nii.gz")
    del resampled
    predictor.predict_from_files_sequential(
        [[str(out / "resampled_0000.nii.gz")]], [str(out / "resampled")], False, True
    )
    labels = resample_from_to(nib.load(out / "resampled.nii.gz"), image, order=0)
    nib.save(labels, out / "ct.nii.gz")
    return out / "ct.nii.gz"
