"""The encoder server: a TensorFlow 2 successor of bert-serving-start (bert-as-service 1.10.0)."""
