"""Generated code for relive.registry.v1; do not edit."""
