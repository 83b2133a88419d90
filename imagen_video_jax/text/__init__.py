"""Text: the T5 tokenizer, checkpoint conversion, the prompt encoder and the embedding cache."""
