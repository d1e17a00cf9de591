"""The paper's analyses (sparsity, steer, inspect, suppress, typographic defence); each a leaf that reads SAEs
and never trains them."""
