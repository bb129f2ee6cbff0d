"""Real-time perception runtime: sources -> per-stream inference -> sinks, with drop accounting.

>>> from terraseg.inference.runtime import BagSink, load_backend, open_source, run_pipeline
>>> source = open_source("drive_bag", camera=True, lidar=True, realtime=True)      # doctest: +SKIP
>>> backends = {"camera": load_backend("litefpn.onnx", "camera"),                  # doctest: +SKIP
...             "lidar": load_backend("salsanext.onnx", "lidar")}
>>> stats = run_pipeline(source, backends, [BagSink("predictions_bag")], live=True)  # doctest: +SKIP
>>> stats.to_dict()["streams"]["/camera/image"]["latency_ms"]["p95"]              # doctest: +SKIP

- :mod:`~terraseg.inference.runtime.types`: :class:`SensorMessage`, :class:`Prediction`, the
  :class:`Sink` protocol.
- :mod:`~terraseg.inference.runtime.sources`: bags, dataset folders, videos / images, scans,
  the simulator driving live; real-time pacing (:func:`open_source`).
- :mod:`~terraseg.inference.runtime.backends`: PyTorch / ONNX Runtime camera and LiDAR
  backends (:func:`load_backend`).
- :mod:`~terraseg.inference.runtime.pipeline`: threads, bounded queues, drop policies
  (:class:`Pipeline`, :func:`run_pipeline`).
- :mod:`~terraseg.inference.runtime.stats`: latency / throughput / drops, live table, JSON.
- :mod:`~terraseg.inference.runtime.sinks`: ROS 2 bag output (:class:`BagSink`), PNG /
  ``.label`` files (:class:`FileSink`).
- :mod:`~terraseg.inference.runtime.rerun_view`: the Rerun live view / recording
  (:class:`RerunSink`; ``rerun`` itself is imported when a sink is created).
- :mod:`~terraseg.inference.runtime.ros_node`: a ROS 2 node (``terraseg-ros``; needs rclpy).
"""

from terraseg.inference.runtime.backends import Backend, ImageBackend, ScanBackend, load_backend, model_kind
from terraseg.inference.runtime.pipeline import DROP_POLICIES, BoundedQueue, DropPolicy, Pipeline, run_pipeline
from terraseg.inference.runtime.rerun_view import RerunSink, build_blueprint
from terraseg.inference.runtime.sinks import BagSink, FileSink, output_topic, topic_name
from terraseg.inference.runtime.sources import (
    BagSource,
    DatasetSource,
    ImageSequenceSource,
    ScanFolderSource,
    SimSource,
    Source,
    open_source,
    parse_sim_spec,
)
from terraseg.inference.runtime.stats import LatencyHistogram, LiveTable, RunStats, StreamStats
from terraseg.inference.runtime.types import Prediction, SensorMessage, Sink, StreamKind, finish_sink

__all__ = [
    "DROP_POLICIES",
    "Backend",
    "BagSink",
    "BagSource",
    "BoundedQueue",
    "DatasetSource",
    "DropPolicy",
    "FileSink",
    "ImageBackend",
    "ImageSequenceSource",
    "LatencyHistogram",
    "LiveTable",
    "Pipeline",
    "Prediction",
    "RerunSink",
    "RunStats",
    "ScanBackend",
    "ScanFolderSource",
    "SensorMessage",
    "SimSource",
    "Sink",
    "Source",
    "StreamKind",
    "StreamStats",
    "build_blueprint",
    "finish_sink",
    "load_backend",
    "model_kind",
    "open_source",
    "output_topic",
    "parse_sim_spec",
    "run_pipeline",
    "topic_name",
]
