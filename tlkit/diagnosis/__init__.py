"""`tlkit doctor`: what is wrong with a dataset, before training on it (the command is `doctor.py`)."""
