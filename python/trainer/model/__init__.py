"""From examples to a fitted classifier: arguments, features, the encoder, fitting, evaluation, label issues."""
