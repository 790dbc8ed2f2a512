"""Generated code for relive.executor.v1; do not edit."""
