"""The crammedBERT-3072 shape as Hugging Face `transformers.BertConfig` arguments, for the PyTorch peers
(benchmarks/model_inference.py, hf_train_peer.py): 16 layers, hidden 768, 12 heads, feedforward 3072,
vocabulary 32768, SDPA attention. Plain data: importing it needs neither torch nor transformers."""

BERT_SHAPE = dict(
    vocab_size=32768,
    hidden_size=768,
    num_hidden_layers=16,
    num_attention_heads=12,
    intermediate_size=3072,
    attn_implementation="sdpa",
)
