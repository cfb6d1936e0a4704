"""Performance prediction for the encoder search (CARL): architecture graphs, predictors, the avatar-encoder
benchmark they learn from (trials on Ray), and their evaluation."""
