"""Reparameterization: fold*.py, graph_fold.py, foreign.py, reparam.py, user_model.py, checkpoint.py, pipeline.py."""
