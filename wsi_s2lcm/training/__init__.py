"""Training from scribbles (S2L-CM): scribble rasterizing and generation, data, losses, trainer.

Modules: :mod:`~wsi_s2lcm.training.config` (the :class:`TrainConfig`),
:mod:`~wsi_s2lcm.training.scribbles` (scribbles to sparse targets),
:mod:`~wsi_s2lcm.training.generate` (scribbles from instance masks),
:mod:`~wsi_s2lcm.training.dataset` (image/scribble pairs at the model's mpp),
:mod:`~wsi_s2lcm.training.augment`, :mod:`~wsi_s2lcm.training.pseudo` (EMA pseudo labels),
:mod:`~wsi_s2lcm.training.losses` (pCE, MCR, pMIL), :mod:`~wsi_s2lcm.training.inference`
(whole-image prediction), :mod:`~wsi_s2lcm.training.evaluate` (held-out scribble metrics),
:mod:`~wsi_s2lcm.training.calibrate` (separation height), :mod:`~wsi_s2lcm.training.records`
(log, curves) and
:mod:`~wsi_s2lcm.training.trainer` (the loop).
"""
