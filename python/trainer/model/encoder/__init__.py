"""The sentence encoder: embeddings and their backends, the cache, the encoder process, fine-tuning."""
