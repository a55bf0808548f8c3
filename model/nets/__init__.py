"""The networks and their losses: encoder, temporal nets, heads, decoders, the variant table."""
