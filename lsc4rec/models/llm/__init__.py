"""The cloud LLM recommender: item tokens, training on stale sequences, constrained candidate generation."""
