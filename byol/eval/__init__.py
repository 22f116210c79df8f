"""Evaluation of pretrained encoders, as the BYOL paper judges them: kNN and linear
classification on frozen features (`byol.eval.run`), semi-supervised fine-tuning
(`byol.eval.finetune`) and transfer to other datasets (`byol.eval.transfer`); and export of
the encoder as a torchvision ResNet state dict (`byol.eval.encoder`)."""
