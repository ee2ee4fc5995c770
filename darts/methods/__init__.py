"""The pieces where DARTS variants differ (docs/collapse-mixing.md)."""
