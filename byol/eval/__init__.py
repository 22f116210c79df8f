"""Evaluation of pretrained encoders: kNN and linear classification on frozen features, and
export of the encoder as a torchvision ResNet state dict. See `byol.eval.run`."""
