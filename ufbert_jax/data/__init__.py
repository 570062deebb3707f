"""Data: tokenizer, corpus -> packed token shards, MLM masking, loaders."""
