"""Per-sample gradient norms through Opacus hooks; the only package that imports opacus."""
