"""Per-instance privacy accounting (THEORY §1-§5): pure tensor math, no lightning, no opacus."""
