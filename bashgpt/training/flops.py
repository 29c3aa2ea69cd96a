"""FLOP counts for throughput and utilisation figures."""


def non_embedding_params(config) -> int:
    d, layers = config.hidden_size, config.num_hidden_layers
    inner = config.intermediate_size
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * inner + inner + d) + 4 * d
    return layers * per_layer + 2 * d


def training_flops_per_token(config, seq_len: int) -> float:
    """6 * (N_non-embedding + V*d) + 12 * L * d * T: forward + backward, LM head and attention counted in full."""
    d, layers = config.hidden_size, config.num_hidden_layers
    return 6 * (non_embedding_params(config) + config.vocab_size * d) + 12 * layers * d * seq_len
