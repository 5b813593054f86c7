"""The Kubeflow pipeline over the stages: local runs, compilation and submission."""
