"""Frames and dataset readers (SemanticKITTI, RELLIS-3D, GOOSE, CARLA exports, generic folders)."""

from terraseg.datasets.base import SPLITS, FrameDataset, read_split_list
from terraseg.datasets.frame import XYZI, Calibration, Frame, invert_transform

__all__ = ["SPLITS", "XYZI", "Calibration", "Frame", "FrameDataset", "invert_transform", "read_split_list"]
