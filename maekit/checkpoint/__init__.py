"""Checkpoint knowledge, one concept a module, above :mod:`maekit.formats` (reading and writing
files of every format) and :mod:`maekit.files` (atomic writes):

- :mod:`.rundir`: the run folder's rules (last, best, periodic files pruned to ``--keep_last``,
  interrupted saves' temp files, the checkpoint auto-resume continues from);
- :mod:`.state_dict`: a state dict against a model (wrappers, shapes, keys; one error text);
- :mod:`.adapt`: weights fitted to another input geometry (channels, patch grid);
- :mod:`.pretrained`: released or pre-trained weights loaded into a model (``--finetune``,
  ``pretrain --init``, :func:`maekit.load_checkpoint`).

The training state (model, optimizer, scaler; fsdp) is saved and restored by the engine
(:mod:`maekit.engine.train_state`) with these rules.
"""
