"""Looking at what a model learned: reconstructions, training curves, features and k-NN.

Each command is one module with a ``run(cfg)``; ``maekit.cli`` imports them lazily.
"""
