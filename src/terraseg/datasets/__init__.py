"""Frames and dataset readers (SemanticKITTI, RELLIS-3D, GOOSE, CARLA exports, nuScenes-lidarseg, the
simulator's paired output, generic folders).

Paired camera + LiDAR frames (image, scan, labels, calibration in one Frame, for cross-modal
models): :class:`SimDataset` (kind ``sim``), :class:`NuScenesDataset` (``nuscenes``),
``Rellis3DLidarDataset(..., images=True)``, ``SemanticKITTIDataset(..., images=True)`` and generic
folders with images/, points/ and calib.yaml."""

from terraseg.datasets.base import SPLITS, FrameDataset, read_split_list
from terraseg.datasets.carla import CarlaCameraDataset, CarlaLidarDataset, read_carla_semantic_lidar
from terraseg.datasets.generic import GenericDataset
from terraseg.datasets.generic_writer import GenericWriter, write_generic_frame
from terraseg.datasets.goose2d import Goose2DDataset
from terraseg.datasets.goose3d import Goose3DDataset
from terraseg.datasets.nuscenes import NuScenesDataset
from terraseg.datasets.registry import (
    DATASET_KINDS,
    dataset_class,
    detect_kind,
    open_dataset,
    parse_reader_options,
    reader_options,
)
from terraseg.datasets.rellis3d import Rellis3DImageDataset, Rellis3DLidarDataset, find_rellis_calibration
from terraseg.datasets.semantickitti import SemanticKITTIDataset, kitti_lidar_poses
from terraseg.datasets.sim import SimDataset
from terraseg.datasets.stats import ClassStats, load_class_weights, save_class_stats
from terraseg.frame import XYZI, Calibration, Frame, invert_transform

__all__ = [
    "DATASET_KINDS",
    "SPLITS",
    "XYZI",
    "Calibration",
    "CarlaCameraDataset",
    "CarlaLidarDataset",
    "ClassStats",
    "Frame",
    "FrameDataset",
    "GenericDataset",
    "GenericWriter",
    "Goose2DDataset",
    "Goose3DDataset",
    "NuScenesDataset",
    "Rellis3DImageDataset",
    "Rellis3DLidarDataset",
    "SemanticKITTIDataset",
    "SimDataset",
    "dataset_class",
    "detect_kind",
    "find_rellis_calibration",
    "invert_transform",
    "kitti_lidar_poses",
    "load_class_weights",
    "open_dataset",
    "parse_reader_options",
    "read_carla_semantic_lidar",
    "read_split_list",
    "reader_options",
    "save_class_stats",
    "write_generic_frame",
]
