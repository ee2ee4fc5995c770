"""The pieces where DARTS variants differ (docs/collapse-pieces.md): perturbations, supernet changes, selection rules, presets."""
