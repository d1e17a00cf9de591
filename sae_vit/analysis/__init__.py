"""The paper's analyses (sparsity, steer, inspect, suppress, defend-typo): they read SAEs, never train."""
