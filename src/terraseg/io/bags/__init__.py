"""ROS 1 / ROS 2 bags: reading, decoding sensor messages to numpy, writing, synchronising.

No ROS installation is needed (built on the pure-Python ``rosbags`` package).

>>> from terraseg.io.bags import open_bag, decode_image
>>> with open_bag("run.bag") as bag:                                  # doctest: +SKIP
...     for m in bag.messages("/camera/image"):
...         rgb = decode_image(m.msg, bag.where(m.topic, m.index))
"""

from terraseg.io.bags.decode import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    IMAGE_ENCODINGS,
    POINTCLOUD2,
    PointCloud,
    decode_camera_info,
    decode_compressed_image,
    decode_image,
    decode_message,
    decode_pointcloud2,
    stamp_ns,
)
from terraseg.io.bags.reader import Bag, BagMessage, TopicInfo, open_bag
from terraseg.io.bags.sync import SyncResult, synchronize
from terraseg.io.bags.writer import BagWriter, image_payload, pointcloud_payload

__all__ = [
    "CAMERA_INFO",
    "COMPRESSED_IMAGE",
    "IMAGE",
    "IMAGE_ENCODINGS",
    "POINTCLOUD2",
    "Bag",
    "BagMessage",
    "BagWriter",
    "PointCloud",
    "SyncResult",
    "TopicInfo",
    "decode_camera_info",
    "decode_compressed_image",
    "decode_image",
    "decode_message",
    "decode_pointcloud2",
    "image_payload",
    "open_bag",
    "pointcloud_payload",
    "stamp_ns",
    "synchronize",
]
