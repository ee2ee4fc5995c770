"""The pieces where DARTS variants differ (docs/collapse.md): how mixing weights are made,
what the alpha loss adds, perturbations, supernet changes, selection rules, presets."""
