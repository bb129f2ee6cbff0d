"""2D (camera) segmentation models: one factory over segmentation-models-pytorch, timm and
(optionally) Hugging Face ``transformers``.

>>> import torch
>>> from terraseg.models.image import build_image_model
>>> model = build_image_model("upernet", "resnet18", num_classes=5).eval()
>>> model(torch.zeros(1, 3, 96, 128)).shape
torch.Size([1, 5, 96, 128])

============= ======================== ==========================================================
arch          default encoder          good for
============= ======================== ==========================================================
upernet       tu-convnext_tiny         strong general-purpose baseline (the GOOSE 64-class
                                       reference setup); FCN aux head on encoder stage 3 by default
deeplabv3plus resnet50                 sharp boundaries from the stride-4 skip; robust on small
                                       datasets
segformer     mit_b2                   transformer encoder, good accuracy per FLOP, robust to
                                       domain shift (sim-to-real, day-to-night)
fpn           resnet50                 simple, fast multi-scale decoder; thin structures
litefpn       tu-mobilenetv3_large_100 real-time on-robot inference (CPU / ONNX Runtime): light
                                       encoder, LR-ASPP context, 2-level FPN, stride-8 logits
acfnet        tu-efficientnet_b3       ACF-Net on EfficientNet (reference 001): coarse
                                       segmentation, class centres, class attention; the coarse
                                       logits are the aux output
mask2former   swin-tiny                mask classification with a transformer decoder; needs more
                                       data and iterations (optional ``transformers`` dependency)
============= ======================== ==========================================================

Output convention (all architectures, see :mod:`terraseg.models.image.base`): ``model(x)`` with
``x`` ``(N, 3, H, W)`` float, normalised, returns logits ``(N, num_classes, H, W)`` at input
resolution in eval mode; in train mode models with an auxiliary head (``model.has_aux``) return
``{"out": logits, "aux": aux_logits}`` (both at input resolution), the others the logits tensor.
Any ``H``, ``W`` work (inputs are padded to a multiple of 32 internally).
``model.forward_features(x)`` (every architecture but Mask2Former) returns the per-pixel features
before the classifier and the classifier's logits at the decoder's stride
(:class:`~terraseg.models.image.base.PixelFeatures`), for heads that read features at given pixels
(the cross-modal models of :mod:`terraseg.models.fusion`).

Inference: :class:`ImagePredictor` runs a model on ``(H, W, 3)`` uint8 images (normalisation,
base size, whole-image or sliding-window inference, :class:`TTAConfig` test-time augmentation);
:mod:`terraseg.models.image.windows` holds the torch-level core shared with training validation.

Weights: ``encoder_weights`` never download unless asked: ``pretrained=True`` (ImageNet encoder;
ADE20K for Mask2Former), ``weights="imagenet"`` (an encoder tag), ``weights="org/name"`` (a hub
model) or ``weights="model.pth"`` (a local checkpoint, loaded with class remapping by
:func:`terraseg.models.surgery.load_weights`).
"""

from terraseg.models.image.base import ImageSegmenter, ModelOutput, PixelFeatures, unpack_outputs
from terraseg.models.image.factory import (
    ImageArch,
    build_image_model,
    describe_image_archs,
    image_arch,
    list_image_archs,
    list_image_encoders,
    load_image_model,
)
from terraseg.models.image.predict import BaseImagePredictor, ImagePredictor
from terraseg.models.image.preprocess import IMAGENET_MEAN, IMAGENET_STD, Normalization, normalize_image
from terraseg.models.image.windows import TTAConfig, WindowConfig, infer_probabilities

__all__ = [
    "BaseImagePredictor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageArch",
    "Normalization",
    "ImagePredictor",
    "ImageSegmenter",
    "ModelOutput",
    "TTAConfig",
    "WindowConfig",
    "PixelFeatures",
    "build_image_model",
    "describe_image_archs",
    "image_arch",
    "infer_probabilities",
    "list_image_archs",
    "list_image_encoders",
    "load_image_model",
    "normalize_image",
    "unpack_outputs",
]
