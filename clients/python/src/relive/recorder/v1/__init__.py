"""Generated code for relive.recorder.v1; do not edit."""
