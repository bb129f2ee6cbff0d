"""Frames and dataset readers (SemanticKITTI, RELLIS-3D, GOOSE, CARLA exports, generic folders)."""

from terraseg.datasets.base import SPLITS, FrameDataset, read_split_list
from terraseg.datasets.carla import CarlaCameraDataset, CarlaLidarDataset, read_carla_semantic_lidar
from terraseg.datasets.generic import GenericDataset
from terraseg.datasets.generic_writer import GenericWriter, write_generic_frame
from terraseg.datasets.goose2d import Goose2DDataset
from terraseg.datasets.goose3d import Goose3DDataset
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
    "Rellis3DImageDataset",
    "Rellis3DLidarDataset",
    "SemanticKITTIDataset",
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
