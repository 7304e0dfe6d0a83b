"""solo-learn's entry points as functions, on a composed config: ``pretrain``
(``main_pretrain.py``), ``linear`` (``main_linear.py``), ``knn`` (``main_knn.py``), and the reading
and checking of the checkpoints they write. ``cli`` gives them their command lines; ``compare``
runs them over a grid of arms and seeds."""
