"""Evaluation: the stage (`medpipe.evaluate.stage.evaluate_model`) and the pieces it is made of, each its own
module: predictions (`predict`), metrics, calibration, bootstrap intervals (`uncertainty`), plots, Grad-CAM
(`explain`), the outside-the-anatomy check (`reliance`) and the model card (`card`).

Importing one of them (say `medpipe.evaluate.metrics`) does not import the others, nor torch or training.
"""
